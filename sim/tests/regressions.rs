//! Replays every run in `sim/seeds/`: each once exposed a bug in the library or a
//! checker, and must stay clean.

mod common;

use sim::{RunConfig, S, Scenario, run};

#[test]
fn regression_seeds_stay_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds");
    let mut runs = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let scenario =
                Scenario::parse(f[0]).unwrap_or_else(|| panic!("bad scenario in {line}"));
            let mut config = RunConfig::new(f[2].parse().unwrap(), f[1].parse().unwrap(), scenario);
            config.duration = f[3].parse::<u64>().unwrap() * S;
            config.resources = f[4].parse().unwrap();
            if let Some(loss) = f.get(5) {
                config.loss = loss.parse().unwrap();
            }
            common::assert_clean(&run(&config, None), line);
            runs += 1;
        }
    }
    assert!(runs >= 5, "only {runs} regression runs found");
}
