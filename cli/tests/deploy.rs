//! The deployment examples in `examples/deploy/` use only flags and environment variables
//! that `gossip-election` has: every worker's command line, with its environment turned
//! into the flags it stands for, parses.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{CommandFactory, Parser};
use gossip_election_cli::{Cli, Command};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Each environment variable `run` reads, and its flag.
fn run_env() -> BTreeMap<String, String> {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("a run subcommand");
    run.get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_string();
            Some((env, format!("--{}", arg.get_long()?)))
        })
        .collect()
}

/// Parses `args` (after the program name) with `env` given as the flags it stands for,
/// as clap does when it reads them from the environment.
fn parse_with_env(args: &[String], env: &BTreeMap<String, String>, what: &str) -> Cli {
    let flags = run_env();
    let mut argv = vec!["gossip-election".to_string()];
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    argv.extend(args[..split].iter().cloned());
    for (key, value) in env {
        let flag = flags
            .get(key)
            .unwrap_or_else(|| panic!("{what}: {key} is not a variable gossip-election reads"));
        argv.push(flag.clone());
        argv.push(value.clone());
    }
    argv.extend(args[split..].iter().cloned());
    Cli::try_parse_from(&argv).unwrap_or_else(|err| panic!("{what}: {argv:?}: {err}"))
}

#[test]
fn the_compose_file_runs_three_workers_with_flags_that_exist() {
    let docs = YamlLoader::load_from_str(&deploy("compose.yaml")).expect("compose.yaml is YAML");
    let services = docs[0]["services"].as_hash().expect("a services map");
    assert_eq!(services.len(), 3, "three workers");
    let mut names = Vec::new();
    for (service, spec) in services {
        let service = service.as_str().unwrap();
        let command: Vec<String> = spec["command"]
            .as_vec()
            .unwrap_or_else(|| panic!("{service}: command is a list"))
            .iter()
            .map(|w| w.as_str().expect("a string").to_string())
            .collect();
        let env: BTreeMap<String, String> = spec["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{service}: environment is a map"))
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => panic!("{service}: {other:?} is not a value"),
                };
                (k.as_str().unwrap().to_string(), value)
            })
            .collect();
        let cli = parse_with_env(&command, &env, service);
        let Command::Run(run) = cli.command else {
            panic!("{service}: not `run`");
        };
        assert_eq!(run.command, ["node", "/app/worker.js"]);
        assert_eq!(run.resource, "billing");
        // The join list names every worker, this one included.
        assert_eq!(run.join.len(), 3, "{service}");
        names.push(run.name.clone());
        assert_eq!(run.name, service);
    }
    assert_eq!(names, ["worker-1", "worker-2", "worker-3"]);
}

#[test]
fn the_systemd_unit_runs_a_command_line_that_parses() {
    let unit = deploy("billing-worker.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let words = shell_words::split(exec).expect("ExecStart splits into words");
    assert!(words[0].ends_with("/gossip-election"), "{words:?}");
    let cli = parse_with_env(&words[1..], &BTreeMap::new(), "ExecStart");
    let Command::Run(run) = cli.command else {
        panic!("not `run`");
    };
    assert_eq!(run.command, ["/usr/bin/node", "/opt/billing/worker.js"]);
    assert!(
        unit.contains("KillMode=mixed"),
        "SIGTERM must reach gossip-election alone: it stops the worker itself"
    );
}
