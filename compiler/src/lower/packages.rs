//! Stage `lower`, package sections: which sections a target installs, and each section as
//! `prepare` / `RepoChange` / `install` / `cleanup` steps; a repository's parts go where the
//! module documentation of `lower` says, so a renderer does exactly what a step's fields say.

use crate::layer::{Layer, PackageSection, Repo, SectionKey};
use crate::plan::{Action, Gate, Gates, Phase, ReverseKind, ReverseOp, Scope, Step};

use super::{rev, rev_extra, step, LowerError};

/// Reference §1.3: the first tag with a tag section wins (rendered with the primary format, `None`
/// if the target has none); otherwise every section of each target format, in format order.
pub(super) fn select_sections<'l>(
    layer: &'l Layer,
    tags: &[String],
    formats: &[String],
) -> Vec<(&'l PackageSection, Option<String>)> {
    for tag in tags {
        let hit = layer.package_sections.iter().find(|s| match &s.key {
            SectionKey::Tags(ts) => ts.iter().any(|t| t == tag),
            SectionKey::Format(_) => false,
        });
        if let Some(section) = hit {
            return vec![(section, formats.first().cloned())];
        }
    }
    let mut out = Vec::new();
    for format in formats {
        for section in &layer.package_sections {
            if matches!(&section.key, SectionKey::Format(f) if f == format) {
                out.push((section, Some(format.clone())));
            }
        }
    }
    out
}

pub(super) fn lower_section(
    gates: Gates,
    layer: &str,
    section: &PackageSection,
    format: &str,
    steps: &mut Vec<Step>,
) -> Result<(), LowerError> {
    let mut prepare_repos: Vec<Repo> = Vec::new();
    let mut prepare_reverse: Vec<ReverseOp> = Vec::new();
    let mut changes: Vec<(String, String)> = Vec::new();
    for repo in &section.repos {
        let split = split_repo(layer, format, repo)?;
        if let Some(r) = split.prepare {
            prepare_repos.push(r);
        }
        if let Some(file) = split.downloaded_file {
            prepare_reverse.push(rev_extra(
                ReverseKind::RemoveRepoFile,
                Scope::System,
                vec![file],
                &[("layer", layer), ("format", format)],
            ));
        }
        changes.extend(split.file);
    }
    for copr in &section.copr {
        prepare_reverse.push(rev(
            ReverseKind::CoprDisable,
            Scope::System,
            vec![copr.clone()],
        ));
    }
    let has_prepare = !prepare_repos.is_empty()
        || !section.keys.is_empty()
        || !section.copr.is_empty()
        || !section.modules.is_empty();
    let sets_up_repos = has_prepare || !changes.is_empty();
    let repo_gate = Some(Gate::AllowRepoChanges);

    // Each phase's step carries the part of the section it does.
    let nothing = PackageSection::empty(section.key.clone(), section.pos);
    let action = |part: PackageSection| Action::SystemPackages {
        format: format.to_string(),
        packages: part.packages,
        options: part.options,
        repos: part.repos.clone(),
        keys: part.keys,
        copr: part.copr,
        modules: part.modules,
        exclude: part.exclude,
    };

    if has_prepare {
        let part = PackageSection {
            repos: prepare_repos,
            keys: section.keys.clone(),
            copr: section.copr.clone(),
            modules: section.modules.clone(),
            ..nothing.clone()
        };
        steps.push(
            step(action(part), Scope::System, prepare_reverse)
                .in_phase(Phase::Prepare)
                .gated(repo_gate, gates),
        );
    }
    for (path, content) in changes {
        let reverse = vec![rev_extra(
            ReverseKind::RemoveRepoFile,
            Scope::System,
            vec![path.clone()],
            &[("layer", layer), ("format", format)],
        )];
        let change = Action::RepoChange {
            format: format.to_string(),
            path,
            content,
        };
        steps.push(
            step(change, Scope::System, reverse)
                .in_phase(Phase::Prepare)
                .gated(repo_gate, gates),
        );
    }
    let part = PackageSection {
        packages: section.packages.clone(),
        options: section.options.clone(),
        exclude: section.exclude.clone(),
        ..nothing.clone()
    };
    let reverse = vec![ReverseOp {
        format: Some(format.to_string()),
        ..rev(
            ReverseKind::PackageRemove,
            Scope::System,
            section.packages.clone(),
        )
    }];
    steps.push(
        step(action(part), Scope::System, reverse)
            .gated(if sets_up_repos { repo_gate } else { None }, gates),
    );
    if !section.copr.is_empty() {
        let part = PackageSection {
            copr: section.copr.clone(),
            ..nothing
        };
        steps.push(
            step(action(part), Scope::System, Vec::new())
                .in_phase(Phase::Cleanup)
                .gated(repo_gate, gates),
        );
    }
    Ok(())
}

/// How one repository entry splits between the prepare step and a repo file.
struct RepoSplit {
    /// What the prepare step still has to do for it.
    prepare: Option<Repo>,
    /// A repo file `(path, content)` written by a `RepoChange`.
    file: Option<(String, String)>,
    /// A repo file the prepare step downloads (rpm `.repo` URL), for its reverse op.
    downloaded_file: Option<String>,
}

fn split_repo(layer: &str, format: &str, repo: &Repo) -> Result<RepoSplit, LowerError> {
    let label = repo.name.clone().unwrap_or_else(|| "?".to_string());
    let bad = |reason: String| LowerError::InvalidRepo {
        layer: layer.to_string(),
        format: format.to_string(),
        repo: label.clone(),
        reason,
    };
    // Single-line fields end up inside repo files and command lines.
    for (field, value) in [
        ("name", &repo.name),
        ("url", &repo.url),
        ("gpgkey", &repo.gpgkey),
        ("gpgcheck", &repo.gpgcheck),
        ("rpm", &repo.rpm),
        ("key", &repo.key),
        ("signed_by", &repo.signed_by),
        ("suite", &repo.suite),
        ("components", &repo.components),
        ("ppa", &repo.ppa),
        ("server", &repo.server),
        ("siglevel", &repo.siglevel),
    ] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_control()) {
                return Err(bad(format!("`{field}:` must be a non-empty single line")));
            }
        }
    }
    let safe_name = || -> Result<String, LowerError> {
        match &repo.name {
            Some(n) if is_file_token(n) => Ok(n.clone()),
            Some(n) => Err(bad(format!(
                "`name: {n}` must be letters, digits, `.`, `_`, `-` (it names a file)"
            ))),
            None => Err(bad(
                "needs a `name:` (it names the repository or keyring file)".to_string(),
            )),
        }
    };
    let no_space = |field: &str, v: &Option<String>| -> Result<(), LowerError> {
        match v {
            Some(s) if s.contains(char::is_whitespace) => {
                Err(bad(format!("`{field}:` must not contain spaces")))
            }
            _ => Ok(()),
        }
    };
    match format {
        "deb" => {
            let mut file = None;
            let keyring = repo.signed_by.clone().or_else(|| {
                repo.key
                    .as_ref()
                    .and(repo.name.as_ref())
                    .map(|n| format!("/etc/apt/keyrings/{n}.gpg"))
            });
            if repo.key.is_some() && repo.signed_by.is_none() {
                safe_name()?;
            }
            if let Some(url) = &repo.url {
                let name = safe_name()?;
                no_space("url", &repo.url)?;
                no_space("suite", &repo.suite)?;
                no_space("signed_by", &repo.signed_by)?;
                let suite = repo.suite.as_deref().unwrap_or("stable");
                let mut line = String::from("deb ");
                if let Some(k) = &keyring {
                    line.push_str(&format!("[signed-by={k}] "));
                }
                line.push_str(&format!("{url} {suite}"));
                if suite != "/" {
                    line.push(' ');
                    line.push_str(repo.components.as_deref().unwrap_or("main"));
                }
                file = Some((
                    format!("/etc/apt/sources.list.d/{name}.list"),
                    format!("# managed by ov (layer {layer})\n{line}\n"),
                ));
            }
            let prepare = (repo.key.is_some() || repo.ppa.is_some()).then(|| Repo {
                name: repo.name.clone(),
                key: repo.key.clone(),
                signed_by: repo.key.as_ref().and(keyring),
                ppa: repo.ppa.clone(),
                ..Repo::default()
            });
            Ok(RepoSplit {
                prepare,
                file,
                downloaded_file: None,
            })
        }
        "rpm" => {
            let disabled = matches!(
                repo.gpgcheck
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("false" | "0" | "no")
            );
            match &repo.url {
                Some(url) if !url.ends_with(".repo") => {
                    let name = safe_name()?;
                    no_space("url", &repo.url)?;
                    no_space("gpgkey", &repo.gpgkey)?;
                    let mut content = format!(
                        "# managed by ov (layer {layer})\n[{name}]\nname={name}\nbaseurl={url}\nenabled=1\ngpgcheck={}\n",
                        if disabled { 0 } else { 1 }
                    );
                    if let Some(k) = &repo.gpgkey {
                        content.push_str(&format!("gpgkey={k}\n"));
                    }
                    let prepare = (repo.gpgkey.is_some() || repo.rpm.is_some()).then(|| Repo {
                        name: repo.name.clone(),
                        gpgkey: repo.gpgkey.clone(),
                        rpm: repo.rpm.clone(),
                        ..Repo::default()
                    });
                    Ok(RepoSplit {
                        prepare,
                        file: Some((format!("/etc/yum.repos.d/{name}.repo"), content)),
                        downloaded_file: None,
                    })
                }
                Some(url) => {
                    // A `.repo` file URL: dnf stores it under its own base name.
                    let base = url.rsplit('/').next().unwrap_or("");
                    if !is_file_token(base) {
                        return Err(bad(format!("cannot tell the file name of `{url}`")));
                    }
                    Ok(RepoSplit {
                        prepare: Some(repo.clone()),
                        file: None,
                        downloaded_file: Some(format!("/etc/yum.repos.d/{base}")),
                    })
                }
                None => Ok(RepoSplit {
                    prepare: (repo.gpgkey.is_some() || repo.rpm.is_some()).then(|| repo.clone()),
                    file: None,
                    downloaded_file: None,
                }),
            }
        }
        _ => Ok(RepoSplit {
            prepare: Some(repo.clone()),
            file: None,
            downloaded_file: None,
        }),
    }
}

/// A file-name-safe token: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
fn is_file_token(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::fixture::*;
    use crate::plan::Venue;

    #[test]
    fn first_matching_tag_section_wins_with_primary_format() {
        let mut fx = Fixture::new();
        let mut l = named("nodejs");
        let mut tag = section(SectionKey::Tags(vec!["ubuntu:24.04".into()]), &["nodejs"]);
        tag.repos = vec![Repo {
            name: Some("nodesource".into()),
            url: Some("https://deb.nodesource.com/node_20.x".into()),
            key: Some("https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key".into()),
            suite: Some("nodistro".into()),
            components: Some("main".into()),
            ..Repo::default()
        }];
        l.package_sections = vec![
            section(fmt("rpm"), &["nodejs", "npm"]),
            section(fmt("deb"), &["nodejs", "npm"]),
            tag,
            section(fmt("pac"), &["nodejs", "npm"]),
        ];
        fx.add(l, &[]);

        // Debian: no tag matches ⇒ the deb format section.
        let plan = fx.lower(DEBIAN, Gates::default(), &["nodejs"]).unwrap();
        assert_eq!(kinds(&plan.layers[0]), ["SystemPackages/install"]);
        assert!(plan.layers[0].steps[0].skip.is_none());

        // Ubuntu 24.04: the tag section, split into key set-up, list file and install.
        let plan = fx.lower(UBUNTU, Gates::default(), &["nodejs"]).unwrap();
        let steps = &plan.layers[0].steps;
        assert_eq!(
            kinds(&plan.layers[0]),
            [
                "SystemPackages/prepare",
                "RepoChange/prepare",
                "SystemPackages/install"
            ]
        );
        let Action::SystemPackages {
            repos,
            format,
            packages,
            ..
        } = &steps[0].action
        else {
            panic!()
        };
        assert_eq!(format, "deb");
        assert!(packages.is_empty());
        assert_eq!(
            repos,
            &[crate::plan::Repo {
                name: Some("nodesource".into()),
                key: Some("https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key".into()),
                signed_by: Some("/etc/apt/keyrings/nodesource.gpg".into()),
                ..crate::plan::Repo::default()
            }]
        );
        assert_eq!(
            steps[1].action,
            Action::RepoChange {
                format: "deb".into(),
                path: "/etc/apt/sources.list.d/nodesource.list".into(),
                content: "# managed by ov (layer nodejs)\ndeb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_20.x nodistro main\n".into(),
            }
        );
        assert_eq!(steps[1].reverse[0].kind, ReverseKind::RemoveRepoFile);
        // Without the gate all three are skipped, naming the flag.
        for s in steps {
            let skip = s.skip.as_ref().unwrap();
            assert_eq!(skip.reason, "requires --allow-repo-changes");
            assert_eq!(skip.enable_with, Some(Gate::AllowRepoChanges));
            assert_eq!(s.venue, Venue::HostNative);
        }
        let plan = fx.lower(UBUNTU, ALL, &["nodejs"]).unwrap();
        assert!(plan.layers[0].steps.iter().all(|s| s.skip.is_none()));

        // Arch: pac only; Fedora: rpm only.
        let plan = fx.lower(ARCH, ALL, &["nodejs"]).unwrap();
        assert!(
            matches!(&plan.layers[0].steps[0].action, Action::SystemPackages { format, .. } if format == "pac")
        );
        let plan = fx.lower(FEDORA, ALL, &["nodejs"]).unwrap();
        assert!(
            matches!(&plan.layers[0].steps[0].action, Action::SystemPackages { format, .. } if format == "rpm")
        );
    }

    #[test]
    fn aur_section_is_nothing_on_a_non_arch_target() {
        let mut fx = Fixture::new();
        let mut l = named("aurish");
        l.package_sections = vec![section(fmt("aur"), &["yay-bin"])];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, ALL, &["aurish"]).unwrap();
        assert!(plan.layers[0].steps.is_empty());
        let plan = fx.lower(ARCH, ALL, &["aurish"]).unwrap();
        assert_eq!(kinds(&plan.layers[0]), ["Builder/install"]);
        assert_eq!(
            plan.layers[0].steps[0].reverse[0].format.as_deref(),
            Some("pac")
        );
    }

    #[test]
    fn rpm_repos_copr_and_modules() {
        let mut fx = Fixture::new();
        let mut l = named("rpmy");
        let mut s = section(fmt("rpm"), &["code", "ffmpeg"]);
        s.repos = vec![
            Repo {
                name: Some("code".into()),
                url: Some("https://packages.microsoft.com/yumrepos/vscode".into()),
                gpgkey: Some("https://packages.microsoft.com/keys/microsoft.asc".into()),
                ..Repo::default()
            },
            Repo {
                name: Some("fedora-multimedia".into()),
                url: Some("https://negativo17.org/repos/fedora-multimedia.repo".into()),
                ..Repo::default()
            },
            Repo {
                name: Some("remi".into()),
                rpm: Some("https://rpms.remirepo.net/fedora/remi-release-43.rpm".into()),
                ..Repo::default()
            },
        ];
        s.copr = vec!["che/nerd-fonts".into()];
        s.modules = vec!["valkey:remi-9.0".into()];
        s.exclude = vec!["*-debuginfo".into()];
        l.package_sections = vec![s];
        fx.add(l, &[]);
        let plan = fx.lower(FEDORA, Gates::default(), &["rpmy"]).unwrap();
        let lp = &plan.layers[0];
        assert_eq!(
            kinds(lp),
            [
                "SystemPackages/prepare",
                "RepoChange/prepare",
                "SystemPackages/install",
                "SystemPackages/cleanup"
            ]
        );
        let Action::SystemPackages {
            repos,
            copr,
            modules,
            ..
        } = &lp.steps[0].action
        else {
            panic!()
        };
        assert_eq!(repos.len(), 3);
        assert_eq!(repos[0].url, None, "the base URL went into the repo file");
        assert_eq!(
            repos[1].url.as_deref(),
            Some("https://negativo17.org/repos/fedora-multimedia.repo")
        );
        assert_eq!(copr, &["che/nerd-fonts"]);
        assert_eq!(modules, &["valkey:remi-9.0"]);
        let rev_kinds: Vec<(ReverseKind, Vec<String>)> = lp.steps[0]
            .reverse
            .iter()
            .map(|r| (r.kind, r.targets.clone()))
            .collect();
        assert_eq!(
            rev_kinds,
            [
                (
                    ReverseKind::RemoveRepoFile,
                    vec!["/etc/yum.repos.d/fedora-multimedia.repo".to_string()]
                ),
                (ReverseKind::CoprDisable, vec!["che/nerd-fonts".to_string()]),
            ]
        );
        let Action::RepoChange { path, content, .. } = &lp.steps[1].action else {
            panic!()
        };
        assert_eq!(path, "/etc/yum.repos.d/code.repo");
        assert_eq!(
            content,
            "# managed by ov (layer rpmy)\n[code]\nname=code\nbaseurl=https://packages.microsoft.com/yumrepos/vscode\nenabled=1\ngpgcheck=1\ngpgkey=https://packages.microsoft.com/keys/microsoft.asc\n"
        );
        let Action::SystemPackages {
            packages,
            exclude,
            repos,
            ..
        } = &lp.steps[2].action
        else {
            panic!()
        };
        assert_eq!(packages, &["code", "ffmpeg"]);
        assert_eq!(exclude, &["*-debuginfo"]);
        assert!(repos.is_empty());
        assert_eq!(lp.steps[2].gate, Some(Gate::AllowRepoChanges));
        assert_eq!(lp.steps[2].reverse[0].kind, ReverseKind::PackageRemove);
        assert_eq!(lp.steps[2].reverse[0].targets, ["code", "ffmpeg"]);
        assert!(lp.steps.iter().all(|s| s.skip.is_some()));
    }

    #[test]
    fn plain_sections_are_ungated() {
        let mut fx = Fixture::new();
        let mut l = named("rg");
        l.package_sections = vec![section(fmt("deb"), &["ripgrep"])];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, Gates::default(), &["rg"]).unwrap();
        let s = &plan.layers[0].steps[0];
        assert_eq!((s.gate, s.skip.is_none()), (None, true));
    }

    #[test]
    fn bad_repo_names_are_rejected() {
        let mut fx = Fixture::new();
        let mut l = named("evil");
        let mut s = section(fmt("deb"), &["x"]);
        s.repos = vec![Repo {
            name: Some("../../etc/passwd".into()),
            url: Some("https://e.example".into()),
            ..Repo::default()
        }];
        l.package_sections = vec![s];
        fx.add(l, &[]);
        let err = fx.lower(DEBIAN, ALL, &["evil"]).unwrap_err();
        assert!(matches!(err, LowerError::InvalidRepo { .. }), "{err}");
        assert!(
            err.to_string().starts_with("layer `evil`: deb repository"),
            "{err}"
        );
    }
}
