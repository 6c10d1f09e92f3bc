//! `cargo xtask`: build, run and test the mqnet kernel. See README.md.

mod bench;
mod boot_raw;
mod boot_tests;
mod cli;
mod kbuild;
mod libtest;
mod qmp;
mod rawload;
mod rr;
mod run;
mod selfexe;
mod tcpload;
mod test;
mod traffic;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::run::say;

fn main() {
    // Usage errors (unknown option, bad value) exit with status 2 here.
    let cli = Cli::parse();
    // Commands that run this executable again (host-side loads inside a
    // namespace) keep a link to it first: `cargo test` in the same run may
    // rebuild target/debug/xtask under them.
    if matches!(cli.command, Cmd::Test(_) | Cmd::Bench(_)) {
        selfexe::pin();
    }
    let result = match cli.command {
        Cmd::Build(args) => kbuild::build(args.release, &[boot::image::Firmware::Bios, boot::image::Firmware::Uefi])
            .map(|b| {
                say!("kernel: {}", b.kernel.display());
                0
            }),
        Cmd::Run(args) => {
            if let Err(e) = args.check() {
                e.exit();
            }
            run::run(args)
        }
        Cmd::Test(args) => test::test(args),
        Cmd::Bench(args) => bench::bench(*args),
        Cmd::TcpLoad(args) => tcpload::main(args),
        Cmd::RawLoad(args) => rawload::main(args),
        Cmd::Rr(args) => rr::main(args),
    };
    selfexe::unpin();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            say!("error: {e}");
            std::process::exit(1);
        }
    }
}
