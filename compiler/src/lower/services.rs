//! Stage `lower`, `service:` entries: a packaged unit to enable (with a drop-in for its
//! overrides) or a custom unit to write; every service step needs `--with-services`.

use crate::layer::{ServiceEntry, ServiceScope};
use crate::plan::{Action, Gate, Gates, ReverseKind, Scope, Step};

use super::{check_env_names, rev, rev_extra, step, LowerError};

/// Suffixes systemd knows; a `use_packaged` name without one gets `.service`.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

/// A unit name that is safe as a file name in a unit directory.
fn is_unit_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'))
}

pub(super) fn lower_service(
    gates: Gates,
    layer: &str,
    service: &ServiceEntry,
) -> Result<Step, LowerError> {
    let scope = match service.scope {
        ServiceScope::System => Scope::System,
        ServiceScope::User => Scope::User,
    };
    let unit_dir = match scope {
        Scope::System => "/etc/systemd/system".to_string(),
        _ => "${HOME}/.config/systemd/user".to_string(),
    };
    let invalid = |unit: &str| LowerError::InvalidUnitName {
        layer: layer.to_string(),
        service: service.name.clone(),
        unit: unit.to_string(),
    };
    check_env_names(layer, &service.env, &format!("service `{}`", service.name))?;
    if let Some(o) = &service.overrides {
        check_env_names(
            layer,
            &o.env,
            &format!("service `{}` overrides", service.name),
        )?;
    }
    match (&service.use_packaged, &service.exec) {
        (Some(_), Some(_)) => Err(LowerError::ServiceWithBothActions {
            layer: layer.to_string(),
            service: service.name.clone(),
        }),
        (None, None) => Err(LowerError::ServiceWithoutAction {
            layer: layer.to_string(),
            service: service.name.clone(),
        }),
        (Some(packaged), None) => {
            let unit = if UNIT_SUFFIXES.iter().any(|s| packaged.ends_with(s)) {
                packaged.clone()
            } else {
                format!("{packaged}.service")
            };
            if !is_unit_name(&unit) {
                return Err(invalid(&unit));
            }
            let mut reverse = Vec::new();
            if service.overrides.is_some() {
                reverse.push(rev_extra(
                    ReverseKind::RemoveDropin,
                    scope,
                    vec![format!("{unit_dir}/{unit}.d/ov-{layer}.conf")],
                    &[("layer", layer)],
                ));
            }
            if service.enable {
                // Teardown runs ops last-to-first: disable what we enabled, then re-enable it
                // if — and only if — the script found it enabled before (a run-time candidate).
                reverse.push(rev(ReverseKind::RestoreEnabled, scope, vec![unit.clone()]));
                reverse.push(rev(ReverseKind::ServiceDisable, scope, vec![unit.clone()]));
            }
            Ok(step(
                Action::ServicePackaged {
                    unit,
                    enable: service.enable,
                    service: service.clone(),
                },
                scope,
                reverse,
            )
            .gated(Some(Gate::WithServices), gates))
        }
        (None, Some(_)) => {
            if !is_unit_name(layer) || !is_unit_name(&service.name) {
                return Err(invalid(&format!("ov-{layer}-{}.service", service.name)));
            }
            let unit = format!("ov-{layer}-{}.service", service.name);
            let mut reverse = vec![rev(
                ReverseKind::ServiceRemove,
                scope,
                vec![format!("{unit_dir}/{unit}")],
            )];
            if service.enable {
                reverse.push(rev(ReverseKind::ServiceDisable, scope, vec![unit.clone()]));
            }
            Ok(step(
                Action::ServiceCustom {
                    unit,
                    service: service.clone(),
                },
                scope,
                reverse,
            )
            .gated(Some(Gate::WithServices), gates))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ServiceOverrides;
    use crate::lower::fixture::*;

    #[test]
    fn services_packaged_and_custom() {
        let mut fx = Fixture::new();
        let mut l = named("svc");
        l.services = vec![
            ServiceEntry {
                name: "qga".into(),
                use_packaged: Some("qemu-guest-agent".into()),
                enable: true,
                ..ServiceEntry::default()
            },
            ServiceEntry {
                name: "sock".into(),
                use_packaged: Some("docker.socket".into()),
                enable: false,
                scope: ServiceScope::User,
                overrides: Some(ServiceOverrides::default()),
                ..ServiceEntry::default()
            },
            ServiceEntry {
                name: "web".into(),
                exec: Some("/usr/bin/web".into()),
                enable: true,
                ..ServiceEntry::default()
            },
        ];
        fx.add(l, &[]);
        let plan = fx.lower(FEDORA, Gates::default(), &["svc"]).unwrap();
        let s = &plan.layers[0].steps;
        assert!(
            matches!(&s[0].action, Action::ServicePackaged { unit, enable: true, .. } if unit == "qemu-guest-agent.service")
        );
        assert!(
            matches!(&s[1].action, Action::ServicePackaged { unit, .. } if unit == "docker.socket")
        );
        assert!(
            matches!(&s[2].action, Action::ServiceCustom { unit, .. } if unit == "ov-svc-web.service")
        );
        let revs: Vec<Vec<(ReverseKind, Vec<String>)>> = s
            .iter()
            .map(|s| {
                s.reverse
                    .iter()
                    .map(|r| (r.kind, r.targets.clone()))
                    .collect()
            })
            .collect();
        use ReverseKind::*;
        assert_eq!(
            revs,
            vec![
                vec![
                    (RestoreEnabled, vec!["qemu-guest-agent.service".to_string()]),
                    (ServiceDisable, vec!["qemu-guest-agent.service".to_string()]),
                ],
                vec![(
                    RemoveDropin,
                    vec!["${HOME}/.config/systemd/user/docker.socket.d/ov-svc.conf".to_string()]
                )],
                vec![
                    (
                        ServiceRemove,
                        vec!["/etc/systemd/system/ov-svc-web.service".to_string()]
                    ),
                    (ServiceDisable, vec!["ov-svc-web.service".to_string()]),
                ],
            ]
        );
        assert_eq!(s[1].scope, Scope::User);
        for st in s {
            assert_eq!(st.gate, Some(Gate::WithServices));
            assert_eq!(st.skip.as_ref().unwrap().reason, "requires --with-services");
        }
    }

    #[test]
    fn service_errors() {
        for (entry, want) in [
            (
                ServiceEntry {
                    name: "x".into(),
                    ..ServiceEntry::default()
                },
                "neither",
            ),
            (
                ServiceEntry {
                    name: "x".into(),
                    exec: Some("a".into()),
                    use_packaged: Some("b".into()),
                    ..ServiceEntry::default()
                },
                "both",
            ),
            (
                ServiceEntry {
                    name: "x".into(),
                    use_packaged: Some("../../evil".into()),
                    ..ServiceEntry::default()
                },
                "invalid unit name",
            ),
            (
                ServiceEntry {
                    name: "a/b".into(),
                    exec: Some("x".into()),
                    ..ServiceEntry::default()
                },
                "invalid unit name",
            ),
        ] {
            let mut l = named("s");
            l.services = vec![entry];
            let err = lower_alone(l, &[]).unwrap_err().to_string();
            assert!(err.starts_with("layer `s`: service"), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }
}
