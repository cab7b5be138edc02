//! Stage `preflight`: what a bundle needs of its target before any of its steps runs — the
//! distro it was compiled for and the commands its steps call that a base system may lack.
//! Invariant: only what every step of the kind needs, whatever ran before it; a toolchain an
//! earlier layer installs (npm, cargo) is not asked for, so the check never refuses a bundle
//! that would have worked.

use std::collections::BTreeSet;

use crate::plan::{Action, InstallPlan, Venue};

/// The commands `run.sh` must find on the target before it runs anything: `runuser` (user-scope
/// steps and the ledger's view in the home run through it), the package manager of every format
/// whose packages or repositories a running step installs, and `systemctl` when a running step
/// configures a service. Sorted.
pub fn required_commands(plan: &InstallPlan) -> Vec<String> {
    let mut out: BTreeSet<&str> = BTreeSet::from(["runuser"]);
    let running = plan
        .layers
        .iter()
        .flat_map(|l| &l.steps)
        .filter(|s| s.skip.is_none() && s.venue != Venue::Skip);
    for step in running {
        match &step.action {
            Action::SystemPackages { format, .. } | Action::RepoChange { format, .. } => {
                out.extend(match format.as_str() {
                    "deb" => &["apt-get", "dpkg-query"][..],
                    "rpm" => &["dnf", "rpm"][..],
                    "pac" => &["pacman"][..],
                    _ => &[][..],
                });
            }
            Action::ServicePackaged { .. } | Action::ServiceCustom { .. } => {
                out.insert("systemctl");
            }
            _ => {}
        }
    }
    out.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Layer;
    use crate::lower::fixture::{fmt, named, section, Fixture, ALL, DEBIAN, FEDORA};
    use crate::plan::Gates;

    fn plan_of(distro: (&[&str], &[&str]), key: &str, gates: Gates) -> InstallPlan {
        let mut fx = Fixture::new();
        fx.add(
            Layer {
                package_sections: vec![section(fmt(key), &["jq"])],
                ..named("tools")
            },
            &[],
        );
        fx.add(named("empty"), &[]);
        fx.lower(distro, gates, &["tools", "empty"])
            .expect("lowers")
    }

    #[test]
    fn the_package_manager_of_the_bundles_format_is_required() {
        assert_eq!(
            required_commands(&plan_of(DEBIAN, "deb", ALL)),
            ["apt-get", "dpkg-query", "runuser"]
        );
        assert_eq!(
            required_commands(&plan_of(FEDORA, "rpm", ALL)),
            ["dnf", "rpm", "runuser"]
        );
    }

    #[test]
    fn a_bundle_without_packages_needs_only_runuser() {
        let mut fx = Fixture::new();
        fx.add(named("empty"), &[]);
        let plan = fx.lower(DEBIAN, ALL, &["empty"]).expect("lowers");
        assert_eq!(required_commands(&plan), ["runuser"]);
    }
}
