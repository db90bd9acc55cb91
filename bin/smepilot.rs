//! `smepilot`: the planner's command line.
//!
//! * `smepilot calibrate [--cached]`: measures this machine's profile (or shows the cached
//!   one), saves it where the backend loads it, and prints the figures.

use ggml_smepilot::backend::planner::calibrate;

const USAGE: &str = "usage: smepilot calibrate [--cached]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("calibrate") => calibrate_cmd(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = code {
        eprintln!("smepilot: {e}");
        std::process::exit(2);
    }
}

fn calibrate_cmd(args: &[String]) -> Result<(), String> {
    let cached = match args {
        [] => false,
        [a] if a == "--cached" => true,
        _ => return Err(USAGE.to_string()),
    };
    let path = calibrate::cache_path();
    let profile = match (cached, path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| calibrate::parse(&t))) {
        (true, Some(p)) => p,
        _ => {
            let t0 = std::time::Instant::now();
            let p = calibrate::measure();
            println!("calibrated in {:.2} s", t0.elapsed().as_secs_f64());
            if let Some(path) = &path {
                std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| format!("{}: {e}", path.display()))?;
                std::fs::write(path, calibrate::to_text(&p)).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            p
        }
    };
    if let Some(path) = &path {
        println!("profile: {}", path.display());
    }
    print!("{}", calibrate::report(&profile));
    Ok(())
}
