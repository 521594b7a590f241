//! `faultline report`: a recording made into one self-contained HTML page, and its figures
//! as SVG files on request.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use faultline::control;

use super::args::UsageError;

#[derive(Args)]
pub struct ReportArgs {
    /// A file written by `--record` (a run, an attached observer, a QEMU migration).
    file: PathBuf,
    /// Where the page goes. Default: the recording's name with `.html`.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Also write each figure as its own SVG file in this folder, for pasting.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<bool> {
    let recording = control::record::read(&args.file).map_err(|e| UsageError(e.to_string()))?;
    let name = args.file.display().to_string();
    // Cut before its first snapshot: nothing to show, and the cut is the reason.
    if let (true, Some(cut)) = (recording.snapshots.is_empty(), &recording.cut) {
        anyhow::bail!("{name}: the recording is cut short before any snapshot ({cut})");
    }
    let report =
        faultline::report::build(&recording, &name).map_err(|e| UsageError(e.to_string()))?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.file.with_extension("html"));
    std::fs::write(&output, &report.html)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
        for f in &report.figures {
            let path = dir.join(format!("{}.svg", f.id));
            std::fs::write(&path, &f.svg)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "faultline report: {} ({} figures{})",
        output.display(),
        report.figures.len(),
        args.svg
            .as_ref()
            .map(|d| format!(", each also in {}", d.display()))
            .unwrap_or_default()
    )?;
    // What was readable is reported; that it was cut short is said and fails the command.
    if let Some(cut) = &recording.cut {
        anyhow::bail!(
            "{name}: the recording is cut short ({cut}); the report shows what came before"
        );
    }
    Ok(true)
}
