//! Stage `cli`: the command line ([`args`], clap types) converted into the plain option structs
//! of the commands room, the dispatch to one command function per subcommand, and the process
//! exit status. The only place clap is used.
//! Invariant: every run ends in one exit status; a failure is printed once, by
//! [`crate::ui::error::report`].

pub mod args;
mod complete;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::apply::push::{PushOptions, RunMode, TestFilter};
use crate::apply::teardown::TeardownOptions;
use crate::commands::compile::{CompileOptions, Output};
use crate::commands::deploy_del::DelRequest;
use crate::commands::fetch::FetchOptions;
use crate::commands::fleet::Fleet;
use crate::commands::inspect::InspectOptions;
use crate::commands::plan::PlanOptions;
use crate::commands::project::{BuildOptions, Selection};
use crate::commands::push::PushRequest;
use crate::commands::status::StatusRequest;
use crate::commands::test::TestRequest;
use crate::commands::verify::VerifyOptions;
use crate::commands::{self, CommandError, Connection, Delivery};
use crate::exit::{Exit, HasExit};
use crate::fleet::Limits;
use crate::repos::FetchMode;
use crate::target::cloud_init::CloudInitOptions;
use crate::target::deploy::DeployArg;
use crate::target::resolve::ConnectOptions;
use crate::ui::progress::Verbosity;
use args::{
    BuildArgs, Cli, Command, ConnectArgs, DeliveryArgs, DeployArgs, DeployCommand, FleetArgs,
};

/// Parse the process arguments, run, and turn the outcome into an exit status.
pub fn main() -> ExitCode {
    // With `COMPLETE=<shell>` set (by the hook `ov completions` prints), answer the shell's
    // completion request and exit; otherwise this does nothing.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return ExitCode::from(code.code());
        }
    };
    if let Command::Compile(args::CompileArgs {
        emit: Some(emit),
        bundle_url,
        ..
    }) = &cli.command
    {
        let wrong = if !["ansible", "cloud-init"].contains(&emit[0].as_str()) {
            Some(format!(
                "`--emit` takes `ansible DIR` or `cloud-init FILE`, not `{}`",
                emit[0]
            ))
        } else if emit[0] == "ansible" && bundle_url.is_some() {
            Some("`--bundle-url` is for `--emit cloud-init` (the role carries the archive)".into())
        } else {
            None
        };
        if let Some(msg) = wrong {
            let e = Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg);
            let _ = e.print();
            return ExitCode::from(Exit::Usage.code());
        }
    }
    let json = json_errors(&cli.command);
    match run(cli) {
        Ok(()) => ExitCode::from(Exit::Ok.code()),
        Err(e) => {
            let exit = e.exit();
            crate::ui::error::report(&e, exit, json);
            ExitCode::from(exit.code())
        }
    }
}

/// Commands that talk to a target report their failure as a JSON line with `--json`.
fn json_errors(command: &Command) -> bool {
    match command {
        Command::Push(a) | Command::Deploy(DeployCommand::Add(a)) => a.delivery.connect.json,
        Command::Test(a) => a.delivery.connect.json,
        Command::Deploy(DeployCommand::Del(a)) => a.connect.json,
        Command::Status(a) => a.connect.json,
        _ => false,
    }
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let project = cli.project;
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let delivery = |project: &Option<PathBuf>, args: &DeliveryArgs| Delivery {
        selection: selection(project, &args.deploy),
        build: build(&args.build),
        connection: connection(&args.connect, verbosity),
    };
    match cli.command {
        Command::Plan(args) => commands::plan::run(&PlanOptions {
            selection: selection(&project, &args.deploy),
            json: args.json,
        }),
        Command::Compile(args) => commands::compile::run(&CompileOptions {
            selection: selection(&project, &args.deploy),
            build: build(&args.build),
            verbosity,
            output: match (args.emit, args.out_dir, args.output) {
                (Some(emit), _, _) if emit[0] == "ansible" => {
                    Output::Ansible(emit[1].clone().into())
                }
                (Some(emit), _, _) => Output::CloudInit {
                    file: emit[1].clone().into(),
                    max: args
                        .max_user_data
                        .unwrap_or(ov_compiler::emit::DEFAULT_MAX_USER_DATA),
                    url: args.bundle_url,
                },
                (None, Some(dir), _) => Output::Unpacked(dir),
                (None, None, Some(file)) => Output::Archive(file),
                (None, None, None) => Output::Default,
            },
        }),
        Command::Inspect(args) => commands::inspect::run(&InspectOptions {
            bundle: args.bundle,
            script: args.script,
            json: args.json,
        }),
        Command::Verify(args) => commands::verify::run(&VerifyOptions {
            bundle: args.bundle,
            allowed_signers: args.allowed_signers,
        }),
        Command::Push(args) | Command::Deploy(DeployCommand::Add(args)) => {
            let fleet = fleet(&args.fleet, &args.delivery.connect, verbosity);
            let request = PushRequest {
                delivery: delivery(&project, &args.delivery),
                require_signature: args.require_signature,
                options: PushOptions {
                    keep: args.keep,
                    dry_run: args.dry_run,
                    no_wait_lock: args.no_wait,
                    force: args.force,
                    force_distro: args.force_distro,
                    verbose: verbosity == Verbosity::Verbose,
                    user: args.user,
                    cloud_init: CloudInitOptions {
                        wait: !args.no_wait_cloud_init,
                        deadline: Duration::from_secs(args.wait_cloud_init),
                        ignore_errors: args.ignore_cloud_init_errors,
                        ..CloudInitOptions::default()
                    },
                    mode: if args.check || args.diff {
                        RunMode::Check { diff: args.diff }
                    } else if args.verify {
                        RunMode::ApplyThenTest
                    } else {
                        RunMode::Apply
                    },
                    // Named by the deploy: the compiled bundle, or the one given.
                    ..PushOptions::new(PathBuf::new())
                },
            };
            match fleet {
                Some(f) => commands::fleet::push(
                    &f,
                    &request.delivery.selection,
                    &request.delivery.build,
                    &request.options,
                ),
                None => commands::push::run(&request),
            }
        }
        Command::Test(args) => commands::test::run(&TestRequest {
            delivery: delivery(&project, &args.delivery),
            filter: TestFilter {
                layers: args.only,
                scope: args.scope,
            },
            user: args.user,
            wait_cloud_init: !args.no_wait_cloud_init,
        }),
        Command::Deploy(DeployCommand::Del(args)) => {
            let request = DelRequest {
                selection: Selection::deploy_only(project, DeployArg::parse(&args.deploy)),
                connection: connection(&args.connect, verbosity),
                options: TeardownOptions {
                    user: args.user,
                    dry_run: args.dry_run,
                    no_wait_lock: args.no_wait,
                    purge: args.purge,
                    verbose: verbosity == Verbosity::Verbose,
                    ..TeardownOptions::default()
                },
            };
            match fleet(&args.fleet, &args.connect, verbosity) {
                Some(f) => commands::fleet::del(&f, &request.selection, &request.options),
                None => commands::deploy_del::run(&request),
            }
        }
        Command::Status(args) => {
            let request = StatusRequest {
                selection: selection(&project, &args.deploy),
                connection: connection(&args.connect, verbosity),
                user: args.user,
                exit_code: args.exit_code,
            };
            match fleet(&args.fleet, &args.connect, verbosity) {
                Some(f) => commands::fleet::status(
                    &f,
                    &request.selection,
                    request.user.as_deref(),
                    request.exit_code,
                ),
                None => commands::status::run(&request),
            }
        }
        Command::Fetch(args) => commands::fetch::run(&FetchOptions {
            project,
            deploy: args.deploy,
            add_layers: args.layers.into_iter().chain(args.add_layer).collect(),
            distro: args.distro,
            update: args.update,
        }),
        Command::Completions { shell } => {
            // The hook that asks `ov` itself (COMPLETE=<shell> ov -- WORDS…), so deploy and
            // layer names come from the project the shell is in.
            let name = shell.to_string();
            let shells = clap_complete::env::Shells::builtins();
            let hook = shells.completer(&name).ok_or_else(|| {
                CommandError::Io(std::io::Error::other(format!(
                    "no completion hook for `{name}`"
                )))
            })?;
            hook.write_registration("COMPLETE", "ov", "ov", "ov", &mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// The deploy argument, parsed once, with its project, layers, distro and opt-ins.
fn selection(project: &Option<PathBuf>, args: &DeployArgs) -> Selection {
    let mut add_layers = args.layers.clone();
    add_layers.extend(args.add_layer.iter().cloned());
    Selection {
        project: project.clone(),
        deploy: DeployArg::parse(&args.deploy),
        add_layers,
        distro: args.distro.clone(),
        gates: ov_compiler::plan::Gates {
            allow_repo_changes: args.gates.allow_repo_changes,
            allow_root_tasks: args.gates.allow_root_tasks,
            with_services: args.gates.with_services,
        },
        fetch: if args.remote.offline {
            FetchMode::Offline
        } else if args.remote.update {
            FetchMode::Update
        } else {
            FetchMode::Fetch
        },
    }
}

fn build(args: &BuildArgs) -> BuildOptions {
    BuildOptions {
        templates: args.templates.clone(),
        source_date_epoch: args.source_date_epoch,
        sign: args.sign.clone(),
    }
}

/// The inventory side of a command, when `--inventory` is given.
fn fleet(args: &FleetArgs, connect: &ConnectArgs, verbosity: Verbosity) -> Option<Fleet> {
    let inventory = args.inventory.clone()?;
    let c = connection(connect, verbosity);
    Some(Fleet {
        inventory,
        limit: args.limit.clone(),
        limits: Limits {
            forks: usize::from(args.forks),
            max_fail: args.max_fail.map(usize::from),
        },
        ssh: c.ssh,
        wait_ssh: connect
            .wait_ssh
            .map(Duration::from_secs)
            .unwrap_or(commands::fleet::FLEET_WAIT_SSH),
        json: c.json,
        verbosity,
    })
}

fn connection(args: &ConnectArgs, verbosity: Verbosity) -> Connection {
    Connection {
        ssh: ConnectOptions {
            host: args.host.clone(),
            port: args.port,
            user: args.ssh_user.clone(),
            identity: args.identity.clone(),
            ssh_config: args.ssh_config.clone(),
            known_hosts: args.known_hosts.clone(),
            ..ConnectOptions::default()
        },
        wait_ssh: Duration::from_secs(args.wait_ssh.unwrap_or(120)),
        json: args.json,
        verbosity,
    }
}
