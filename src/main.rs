//! The `forgetd` binary: everything lives in the library; see `forgetd::cli`.
fn main() -> std::process::ExitCode {
    forgetd::cli::main()
}
