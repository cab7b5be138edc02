//! Stage `lower` (checks): a layer's `tests:` → [`CheckPlan`]s for one target. Invariant: every
//! decision about whether a check can run here is made at compile time and carried as a `skip`
//! reason; what is left for the target is data (paths, names, URLs, expected values) and, for
//! `command:` checks only, the command line itself.
//!
//! `${NAME:default}` forms are the original's container-runtime variables. On a VM or host no
//! port is published and no container exists, so: the account variables (`${HOME}`, `${USER}`,
//! `${UID}`, `${GID}`, `${BUILD_ARCH}`, `${ARCH}`) stay for the target to resolve; `${NAME:default}`
//! becomes its default (`${HOST_PORT:8080}` → `8080`: the service listens on its own port);
//! `${CONTAINER_*}` and `${VOLUME_*}`, and any other variable without a default, make the check
//! skipped with the variable named.

use std::path::Path;

use super::LayerAt;
use crate::layer::{Check, CheckProbe, CheckScope, Matcher};
use crate::plan::{Action, CheckPlan, CheckSpec, CheckWhen, Deploy, LayerPlan, TextOp, TextTest};
use crate::shell::RUNTIME_VARS;

/// Seconds a `command:` check may run when the layer gives no `timeout:`.
pub const DEFAULT_COMMAND_TIMEOUT: u32 = 60;
/// Seconds an `addr:` or `http:` check may take when the layer gives no `timeout:`.
pub const DEFAULT_NET_TIMEOUT: u32 = 10;

/// A check whose value cannot mean anything on any target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: layer `{layer}`: check `{id}`: {reason}")]
pub struct CheckError {
    pub layer: String,
    /// The check's id.
    pub id: String,
    /// Where the check is.
    pub at: LayerAt,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Lower the checks of layer `layer` (whose plan is `layers[index]`) for `deploy`; `layers` is the
/// whole plan, so a `service:` check finds the unit another layer of the deploy sets up.
pub fn lower_checks(
    deploy: &Deploy,
    layer: &str,
    file: &Path,
    checks: &[Check],
    layers: &[LayerPlan],
) -> Result<Vec<CheckPlan>, CheckError> {
    checks
        .iter()
        .map(|c| lower_check(deploy, layer, file, c, layers))
        .collect()
}

fn lower_check(
    deploy: &Deploy,
    layer: &str,
    file: &Path,
    check: &Check,
    layers: &[LayerPlan],
) -> Result<CheckPlan, CheckError> {
    let error = |reason: String| CheckError {
        layer: layer.to_string(),
        id: check.id.clone(),
        at: LayerAt::new(file, check.pos),
        reason,
    };
    // Why the check cannot run here: the first reason found wins.
    let mut notes: Vec<String> = Vec::new();
    let mut var_notes: Vec<String> = Vec::new();
    if let Some(tag) = check
        .exclude_distros
        .iter()
        .find(|t| deploy.distro.tags.contains(t))
    {
        notes.push(format!("excluded on `{tag}` (`exclude_distros`)"));
    }
    let mut sub = |s: &str| match substitute(s) {
        Ok(v) => v,
        Err(reason) => {
            var_notes.push(reason);
            s.to_string()
        }
    };
    let tests = |ms: &[Matcher], sub: &mut dyn FnMut(&str) -> String| -> Vec<TextTest> {
        ms.iter()
            .map(|m| match m {
                Matcher::Contains(v) => TextTest {
                    op: TextOp::Contains,
                    value: sub(v),
                },
                Matcher::Matches(v) => TextTest {
                    op: TextOp::Matches,
                    value: sub(v),
                },
            })
            .collect()
    };
    let mut timeout = DEFAULT_NET_TIMEOUT;
    let probe = match &check.probe {
        CheckProbe::File {
            path,
            exists,
            mode,
            filetype,
            contains,
        } => {
            // A path that names a container variable is skipped (the reason says which), not
            // judged: it has no meaning here.
            let (path, resolved) = match substitute(path) {
                Ok(p) => (p, true),
                Err(reason) => {
                    notes.push(reason);
                    (path.clone(), false)
                }
            };
            let anchored = !resolved
                || path.starts_with('/')
                || path == "~"
                || path.starts_with("~/")
                || RUNTIME_VARS
                    .iter()
                    .any(|(n, _)| path.starts_with(&format!("${{{n}}}")));
            if !anchored {
                return Err(error(format!(
                    "`file: {path}` is a relative path; write an absolute path, `~/…` or `${{HOME}}/…`"
                )));
            }
            CheckSpec::File {
                path,
                exists: *exists,
                mode: mode.clone(),
                filetype: filetype.clone(),
                contains: tests(contains, &mut sub),
            }
        }
        CheckProbe::Command {
            command,
            exit_status,
            stdout,
            stderr,
            in_container,
        } => {
            timeout = DEFAULT_COMMAND_TIMEOUT;
            if let Some(inside) = in_container {
                notes.push(format!(
                    "`in_container: {inside}` checks run relative to the deploy's container; a VM or host deploy has none"
                ));
            }
            CheckSpec::Command {
                command: sub(command),
                exit_status: *exit_status,
                stdout: tests(stdout, &mut sub),
                stderr: tests(stderr, &mut sub),
            }
        }
        CheckProbe::Package {
            name,
            installed,
            package_map,
        } => {
            let format = deploy.distro.primary_format().to_string();
            if !matches!(format.as_str(), "deb" | "rpm" | "pac") {
                notes.push(format!(
                    "no package query for the package format `{format}` of this target"
                ));
            }
            // The most specific tag of the target that the map names wins (`debian:12`
            // before `debian`), as for package sections.
            let name = deploy
                .distro
                .tags
                .iter()
                .find_map(|t| package_map.iter().find(|(k, _)| k == t).map(|(_, v)| v))
                .unwrap_or(name)
                .clone();
            CheckSpec::Package {
                format,
                name,
                installed: *installed,
            }
        }
        CheckProbe::Service {
            name,
            running,
            enabled,
        } => {
            let (unit, user, why_not) = service_unit(layer, name, layers);
            if let Some(reason) = why_not {
                notes.push(reason);
            }
            CheckSpec::Service {
                unit,
                user,
                running: *running,
                enabled: *enabled,
            }
        }
        CheckProbe::Addr { addr, reachable } => {
            let addr = sub(addr);
            let (host, port) = split_addr(&addr).ok_or_else(|| {
                error(format!(
                    "`addr: {addr}` is not `HOST:PORT` (a port from 1 to 65535)"
                ))
            })?;
            CheckSpec::Addr {
                host,
                port,
                reachable: *reachable,
            }
        }
        CheckProbe::Http {
            url,
            status,
            method,
            body,
            allow_insecure,
        } => {
            let url = sub(url);
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(error(format!(
                    "`http: {url}` must be an `http://` or `https://` URL"
                )));
            }
            CheckSpec::Http {
                url,
                method: method.clone(),
                status: *status,
                body: tests(body, &mut sub),
                insecure: *allow_insecure,
            }
        }
        CheckProbe::Mcp { verb } => {
            notes.push(format!(
                "`mcp: {verb}` talks to an MCP server through the container runtime's wiring; a VM or host deploy has none"
            ));
            CheckSpec::Unsupported { what: "mcp".into() }
        }
        CheckProbe::K8s { verb } => {
            notes.push(format!(
                "`k8s: {verb}` queries a cluster through `ov`'s kubeconfig (`cluster:`); the bundle does not carry one"
            ));
            CheckSpec::Unsupported { what: "k8s".into() }
        }
    };
    Ok(CheckPlan {
        id: check.id.clone(),
        scope: match check.scope {
            CheckScope::Build => CheckWhen::Build,
            CheckScope::Deploy => CheckWhen::Deploy,
        },
        timeout_secs: check.timeout_secs.unwrap_or(timeout),
        probe,
        skip: notes.into_iter().chain(var_notes).next(),
    })
}

/// The unit a `service:` check means: a `service:` entry of this layer, else of another layer of
/// the deploy, else the name itself as a system unit. Returns (unit, user manager, why it is not
/// set up here).
fn service_unit(layer: &str, name: &str, layers: &[LayerPlan]) -> (String, bool, Option<String>) {
    let own = layers.iter().filter(|l| l.name == layer);
    let others = layers.iter().filter(|l| l.name != layer);
    for lp in own.chain(others) {
        for step in &lp.steps {
            let (unit, service) = match &step.action {
                Action::ServiceCustom { unit, service } => (unit, service),
                Action::ServicePackaged { unit, service, .. } => (unit, service),
                _ => continue,
            };
            if service.name != name {
                continue;
            }
            let user = step.scope != crate::plan::Scope::System;
            let why = step.skip.as_ref().map(|s| {
                format!(
                    "service `{name}` of layer `{}` is not set up on this target ({})",
                    lp.name, s.reason
                )
            });
            return (unit.clone(), user, why);
        }
    }
    let unit = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    };
    (unit, false, None)
}

fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    ok.then(|| (host.to_string(), port))
}

/// Replace the container-runtime variables of `s` (see the module comment); `Err` names the
/// variable that makes the check meaningless here.
pub fn substitute(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let is_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name {
            out.push_str(&rest[start..start + 2]);
            rest = after;
            continue;
        }
        if RUNTIME_VARS.iter().any(|(n, _)| *n == name) {
            out.push_str(&format!("${{{name}}}"));
        } else if name.starts_with("CONTAINER_") || name.starts_with("VOLUME_") {
            return Err(format!(
                "uses `${{{name}}}`, which only the container runtime sets; a VM or host deploy has none"
            ));
        } else if let Some(d) = default {
            out.push_str(d);
        } else {
            return Err(format!(
                "uses `${{{name}}}`, which only the original's container runtime sets"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_keeps_account_variables_and_takes_defaults() {
        assert_eq!(
            substitute("http://127.0.0.1:${HOST_PORT:8080}/x").as_deref(),
            Ok("http://127.0.0.1:8080/x")
        );
        assert_eq!(
            substitute("${HOME}/.local/bin/x").as_deref(),
            Ok("${HOME}/.local/bin/x")
        );
        assert!(substitute("redis-cli -h ${CONTAINER_IP} ping")
            .unwrap_err()
            .contains("CONTAINER_IP"));
        assert!(substitute("${VOLUME_CONTAINER_PATH:workspace}").is_err());
        assert!(substitute("${deploy_name}").is_err());
        assert_eq!(substitute("a $(b) ${ c").as_deref(), Ok("a $(b) ${ c"));
    }

    fn deploy(tags: &[&str]) -> Deploy {
        Deploy {
            name: "host".into(),
            id: "0123456789abcdef".into(),
            target: crate::plan::TargetKind::Host,
            distro: crate::plan::TargetDistro {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                formats: vec!["deb".into()],
            },
            user: None,
            requested: Vec::new(),
        }
    }

    fn check(probe: CheckProbe) -> Check {
        Check {
            id: "c".into(),
            scope: CheckScope::Build,
            timeout_secs: None,
            exclude_distros: Vec::new(),
            probe,
            pos: crate::layer::Pos { line: 3, column: 5 },
        }
    }

    #[test]
    fn the_most_specific_tag_of_the_package_map_wins() {
        let c = check(CheckProbe::Package {
            name: "conntrack-tools".into(),
            installed: true,
            package_map: vec![
                ("debian".into(), "conntrack".into()),
                ("debian:12".into(), "conntrack-12".into()),
            ],
        });
        let d = deploy(&["debian:12", "debian"]);
        let p = lower_check(&d, "l", Path::new("layers/l/layer.yml"), &c, &[]).expect("lowers");
        assert_eq!(
            p.probe,
            CheckSpec::Package {
                format: "deb".into(),
                name: "conntrack-12".into(),
                installed: true
            }
        );
        let p = lower_check(
            &deploy(&["ubuntu:24.04", "ubuntu", "debian"]),
            "l",
            Path::new("layers/l/layer.yml"),
            &c,
            &[],
        )
        .expect("lowers");
        assert!(matches!(p.probe, CheckSpec::Package { name, .. } if name == "conntrack"));
        let p = lower_check(
            &deploy(&["fedora:43", "fedora"]),
            "l",
            Path::new("layers/l/layer.yml"),
            &c,
            &[],
        )
        .expect("lowers");
        assert!(matches!(p.probe, CheckSpec::Package { name, .. } if name == "conntrack-tools"));
    }

    #[test]
    fn a_service_not_set_up_by_any_layer_is_its_own_unit_and_bad_values_are_errors() {
        let c = check(CheckProbe::Service {
            name: "sshd".into(),
            running: Some(true),
            enabled: None,
        });
        let p = lower_check(
            &deploy(&["debian"]),
            "l",
            Path::new("layers/l/layer.yml"),
            &c,
            &[],
        )
        .expect("lowers");
        assert_eq!(p.skip, None);
        assert!(
            matches!(p.probe, CheckSpec::Service { unit, user: false, .. } if unit == "sshd.service")
        );
        let c = check(CheckProbe::Addr {
            addr: "127.0.0.1".into(),
            reachable: true,
        });
        let e = lower_check(
            &deploy(&["debian"]),
            "l",
            Path::new("layers/l/layer.yml"),
            &c,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not `HOST:PORT`"), "{e}");
        assert!(e.to_string().starts_with("layers/l/layer.yml:3:5: "), "{e}");
        let c = check(CheckProbe::File {
            path: "relative/x".into(),
            exists: true,
            mode: None,
            filetype: None,
            contains: Vec::new(),
        });
        assert!(lower_check(
            &deploy(&["debian"]),
            "l",
            Path::new("layers/l/layer.yml"),
            &c,
            &[]
        )
        .is_err());
    }

    #[test]
    fn addresses_split_at_the_last_colon() {
        assert_eq!(split_addr("127.0.0.1:22"), Some(("127.0.0.1".into(), 22)));
        assert_eq!(split_addr("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(split_addr("host:0"), None);
        assert_eq!(split_addr("host"), None);
        assert_eq!(split_addr("h;x:1"), None);
    }
}
