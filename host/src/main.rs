fn main() -> std::process::ExitCode {
    offerd::cli::main()
}
