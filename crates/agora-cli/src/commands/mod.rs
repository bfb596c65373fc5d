//! One file per command; `run` resolves settings and dispatches.

mod backend;
mod bench;
mod bench_serve;
mod bench_simulate;
mod bench_train;
mod build;
mod chat;
mod corpora;
mod experiment;
mod export;
mod generate;
mod import;
mod init;
mod model;
mod quickstart;
mod runs;
mod serve;
mod show;
mod stats;
mod sweep;
mod train;

use crate::args::{Cli, Command};
use crate::settings::Settings;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.global);
    match cli.command {
        Command::Init => init::run(&settings),
        Command::Import(args) => import::run(&settings, &args),
        Command::Corpora => corpora::run(&settings),
        Command::Show(args) => show::run(&settings, &args),
        Command::Stats(args) => stats::run(&settings, &args),
        Command::Build(args) => build::run(&settings, &args),
        Command::Export(args) => export::run(&settings, &args),
        Command::Bench(args) => bench::run(&settings, &args),
        Command::Quickstart(args) => quickstart::run(&settings, &args),
        Command::Model(command) => model::run(&settings, &command),
        Command::Generate(args) => generate::run(&settings, &args),
        Command::Chat(args) => chat::run(&settings, &args),
        Command::Serve(args) => serve::run(&settings, &args),
        Command::Experiment(command) => experiment::run(&settings, command),
        Command::Simulate(args) => experiment::run_stages(&settings, &args, &[experiment::Stage::Simulate]),
        Command::Continue(args) => experiment::run_stages(&settings, &args, &[experiment::Stage::Continue]),
        Command::Annotate(args) => experiment::run_stages(&settings, &args, &[experiment::Stage::Annotate]),
        Command::Judge(args) => experiment::run_stages(&settings, &args, &[experiment::Stage::Judge]),
        Command::Report(args) => experiment::report::run(&settings, &args),
        Command::Train(command) => train::run(&settings, &command),
        Command::Runs(args) => runs::run(&settings, &args),
        Command::Sweep(args) => sweep::run(&settings, &args),
    }
}
