//! `offerd` itself, built inside this package so tests can spawn it.
fn main() -> std::process::ExitCode {
    offerd::cli::main()
}
