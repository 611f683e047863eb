pub fn main(_a: Args) -> anyhow::Result<std::process::ExitCode> { anyhow::bail!("todo") }
#[derive(clap::Args, Debug)] pub struct Args {}
