//! The `offerd` binary: everything lives in the library's [`offerd::cli`].
fn main() -> std::process::ExitCode {
    offerd::cli::main()
}
