//! `faultline probe`.

use faultline::probe;

pub fn run(json: bool) -> anyhow::Result<bool> {
    let report = probe::run()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", probe::render_text(&report));
    }
    Ok(true)
}
