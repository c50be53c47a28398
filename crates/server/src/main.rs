//! The `atelier` binary: argument parsing lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    atelier_server::cli::main()
}
