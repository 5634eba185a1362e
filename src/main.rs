//! The `bai-s3` binary: parse the command line and hand over to the daemon or the supervisor.

use clap::Parser;

use bai_s3::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Serve(a) | Command::Supervise(a) => a.clone(),
    };
    if let Err(e) = bai_s3::daemon::init_logging(&args.log_level, args.log_format) {
        eprintln!("bai-s3: {e}");
        std::process::exit(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bai-s3: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli.command {
        Command::Serve(args) => match rt.block_on(bai_s3::daemon::serve(args)) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("bai-s3: {e}");
                1
            }
        },
        Command::Supervise(_) => {
            // Forward our own arguments after `supervise` to `serve` unchanged.
            let forward: Vec<_> = std::env::args_os().skip(2).collect();
            match rt.block_on(bai_s3::supervise::run(forward)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bai-s3 supervise: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
