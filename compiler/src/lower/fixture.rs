//! Stage `lower`, tests only: a project in a temporary directory, layers added to it with their
//! files, and lowering for a chosen distro and gates.

use std::collections::BTreeSet;

use super::{lower, LowerError};
use crate::layer::{Layer, PackageSection, Pos, SectionKey, Task, TaskVerb};
use crate::plan::{Deploy, Gates, InstallPlan, LayerPlan, TargetDistro, TargetKind};
use crate::project::Project;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub project: Project,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let project = Project {
            root: dir.path().to_path_buf(),
            layers: Default::default(),
            distros: Default::default(),
            format_names: BTreeSet::new(),
            deployments: Default::default(),
            vms: Default::default(),
        };
        Fixture { dir, project }
    }

    /// Adds a layer whose directory holds `files` (relative path, content).
    pub fn add(&mut self, mut layer: Layer, files: &[(&str, &str)]) {
        let ldir = self.dir.path().join("layers").join(&layer.name);
        std::fs::create_dir_all(&ldir).unwrap();
        for (rel, content) in files {
            let p = ldir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        layer.file = ldir.join("layer.yml");
        layer.source_dir = ldir;
        self.project.layers.insert(layer.name.clone(), layer);
    }

    pub fn lower(
        &self,
        distro: (&[&str], &[&str]),
        gates: Gates,
        order: &[&str],
    ) -> Result<InstallPlan, LowerError> {
        let deploy = Deploy {
            name: "vm:test".into(),
            id: "0123456789abcdef".into(),
            target: TargetKind::Vm { vm: "test".into() },
            distro: TargetDistro {
                tags: distro.0.iter().map(|s| s.to_string()).collect(),
                formats: distro.1.iter().map(|s| s.to_string()).collect(),
            },
            user: Some("op".into()),
            requested: order.iter().map(|s| s.to_string()).collect(),
        };
        let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        lower(&self.project, deploy, gates, &order)
    }
}

pub const ARCH: (&[&str], &[&str]) = (&["archlinux"], &["pac", "aur"]);
pub const DEBIAN: (&[&str], &[&str]) = (&["debian:12", "debian"], &["deb"]);
pub const UBUNTU: (&[&str], &[&str]) = (&["ubuntu:24.04", "ubuntu", "debian"], &["deb"]);
pub const FEDORA: (&[&str], &[&str]) = (&["fedora:43", "fedora"], &["rpm"]);

pub const ALL: Gates = Gates {
    allow_repo_changes: true,
    allow_root_tasks: true,
    with_services: true,
};

pub fn section(key: SectionKey, packages: &[&str]) -> PackageSection {
    PackageSection {
        packages: packages.iter().map(|s| s.to_string()).collect(),
        ..PackageSection::empty(key, Pos::default())
    }
}

pub fn fmt(f: &str) -> SectionKey {
    SectionKey::Format(f.to_string())
}

pub fn task(verb: TaskVerb, user: Option<&str>) -> Task {
    Task {
        verb,
        user: user.map(str::to_string),
        mode: None,
        env: vec![],
        comment: None,
        uninstall: vec![],
        pos: Pos { line: 7, column: 5 },
    }
}

pub fn named(name: &str) -> Layer {
    Layer {
        name: name.to_string(),
        ..Layer::default()
    }
}

pub fn kinds(lp: &LayerPlan) -> Vec<String> {
    lp.steps
        .iter()
        .map(|s| format!("{}/{}", s.kind(), s.phase.as_str()))
        .collect()
}

/// A `download:` of `url` to `to`, extracted as its suffix says, with no other modifiers.
pub fn download(url: &str, to: Option<&str>) -> TaskVerb {
    TaskVerb::Download {
        url: url.to_string(),
        to: to.map(str::to_string),
        extract: None,
        include: vec![],
        strip_components: None,
    }
}

/// A layer `name` whose only content is `task`.
pub fn one_task(name: &str, task: Task) -> Layer {
    Layer {
        tasks: vec![task],
        ..named(name)
    }
}

/// Lowers `layer`, alone in a fresh project with `files` in its directory, on Arch with every gate
/// open.
pub fn lower_alone(layer: Layer, files: &[(&str, &str)]) -> Result<InstallPlan, LowerError> {
    let name = layer.name.clone();
    let mut fx = Fixture::new();
    fx.add(layer, files);
    fx.lower(ARCH, ALL, &[name.as_str()])
}
