//! Stage `resolve`: requested layer names → ONE de-duplicated install order; the order is a pure
//! function of the layer graph and the request order (Kahn's algorithm whose ready queue is ordered
//! by request, then by name), so the same project and request always yield the same order whatever
//! the order of the layer map.
//!
//! Semantics follow the original tool's resolver:
//! 1. `layers:` is composition. A composing layer (non-empty `layers:`) that has no content of its
//!    own ([`Layer::has_content`]) *vanishes*: it never appears in the order, and every edge to it
//!    is replaced by edges to its members (recursively).
//! 2. The needed set is the transitive closure over `layers:` and `depends:` of the request.
//! 3. Edges: a layer comes after everything in its `depends:` and `layers:`.
//! 4. Kahn's algorithm. Each layer has a *rank*: the position of the first request (after
//!    de-duplication) whose closure holds it. The ready queue takes the smallest (rank, name) first.
//!
//! Why this rule: the original resolved each requested layer on its own (Kahn with a
//! lexicographic ready queue) and concatenated the orders, so `--add-layer python --add-layer
//! jupyter-mcp` installed python (and its dependencies) before jupyter-mcp. The rank keeps that:
//! everything the first request needs is closed under dependencies, so it all comes before
//! anything only a later request needs, and so on request by request: the original's
//! concatenation, each layer kept at its first place (the original applied a shared dependency
//! twice). Among one request's new layers the original's rule decides (a ready layer with the
//! smallest name first; layers earlier requests placed count as done), so a single request orders
//! exactly as before. Ordering by name and not by written `depends:` order keeps the order
//! independent of how a layer lists its dependencies, as in the original.
//!
//! One deliberate refinement: a vanishing composer's own `depends:` are kept — they join the needed
//! set and edges to the composer are also redirected to them (the original dropped them, so
//! requesting `chrome-kwin` alone did not pull in `kwin`). No order the original produced for the
//! corpus changes (the corpus tests in `compiler/tests/plan_corpus.rs` pin them).
//!
//! Remote refs (`@github.com/org/repo/layers/x:ver`) are looked up in `layers` under their bare
//! key (`github.com/org/repo/layers/x`); a loader that read the repo cache puts them there. This
//! module never fetches: a missing remote layer is an error that names the cache directory and the
//! command that fills it, so compile stays offline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::layer::{Layer, Layers};

/// Options of [`resolve_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Root of the remote-layer cache (`$OV_REPO_CACHE`, default `~/.cache/ov/repos`), as chosen
    /// by the caller; only used to name directories in error messages and to tell "not fetched"
    /// from "fetched but not loaded". `None` means unknown.
    pub repo_cache: Option<PathBuf>,
}

/// Why a set of layers could not be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A name that is not a layer of the project.
    #[error("unknown layer `{name}` ({}){}", required_by_text(required_by.as_deref()), suggestion_text(suggestions))]
    UnknownLayer {
        /// The name as written.
        name: String,
        /// The layer whose `depends:`/`layers:` named it; `None` when it was requested directly.
        required_by: Option<String>,
        /// Close matches among the known layers, best first.
        suggestions: Vec<String>,
    },
    /// `depends:`/`layers:` edges form a cycle.
    #[error("circular dependency: {}", backticked(cycle))]
    CircularDependency {
        /// The cycle, first element repeated at the end (`a -> b -> a`).
        cycle: Vec<String>,
    },
    /// `layers:` edges alone form a cycle.
    #[error("circular layer composition: {}", backticked(cycle))]
    CircularComposition {
        /// The cycle, first element repeated at the end.
        cycle: Vec<String>,
    },
    /// A remote ref that could not be parsed.
    #[error("invalid remote layer ref `{reference}` ({}): {reason}", required_by_text(required_by.as_deref()))]
    InvalidRemoteRef {
        /// The ref as written.
        reference: String,
        /// Who named it.
        required_by: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A remote ref without a `:version`; the cache directory cannot be known.
    #[error(
        "remote layer ref `{reference}` ({}) has no version; pin one (e.g. `{reference}:v1.0.0`) so it can be fetched into the repo cache",
        required_by_text(required_by.as_deref())
    )]
    RemoteUnpinned {
        /// The ref as written.
        reference: String,
        /// Who named it.
        required_by: Option<String>,
    },
    /// A remote layer that is not in the repo cache (compile never fetches).
    #[error(
        "remote layer `{reference}` ({}) is not in the repo cache (looked in `{}`); fetch it first: `{fetch}`",
        required_by_text(required_by.as_deref()),
        dir_text(cache_dir.as_deref(), repo_dir)
    )]
    RemoteNotCached {
        /// The ref as written.
        reference: String,
        /// Who named it.
        required_by: Option<String>,
        /// The cache root, when the caller passed one.
        cache_dir: Option<PathBuf>,
        /// The repo's directory inside the cache, e.g. `github.com/org/repo@v1`.
        repo_dir: String,
        /// A shell command that fills the cache directory.
        fetch: String,
    },
    /// The remote layer is in the cache but was not loaded into the layer map.
    #[error("remote layer `{reference}` is cached at `{}` but was not loaded into the project", path.display())]
    RemoteNotLoaded {
        /// The ref as written.
        reference: String,
        /// The layer directory inside the cache.
        path: PathBuf,
    },
}

/// `a -> b -> a` with each name in backticks, the way every other message names layers.
fn backticked(cycle: &[String]) -> String {
    cycle
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn required_by_text(required_by: Option<&str>) -> String {
    match required_by {
        Some(by) => format!("required by `{by}`"),
        None => "requested".to_string(),
    }
}

fn suggestion_text(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean `{one}`?"),
        many => {
            let names: Vec<String> = many.iter().map(|s| format!("`{s}`")).collect();
            format!("; did you mean one of {}?", names.join(", "))
        }
    }
}

fn dir_text(cache_dir: Option<&Path>, repo_dir: &str) -> String {
    match cache_dir {
        Some(root) => root.join(repo_dir).display().to_string(),
        None => format!("$OV_REPO_CACHE/{repo_dir} (default ~/.cache/ov/repos/{repo_dir})"),
    }
}

/// A parsed remote layer ref `@<host>/<org>/<repo>/<sub/path>[:<version>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `github.com`.
    pub host: String,
    /// Organisation or user.
    pub org: String,
    pub repo: String,
    /// Path of the layer directory inside the repository, e.g. `layers/x`.
    pub sub_path: String,
    /// The version (tag, branch or commit), if pinned.
    pub version: Option<String>,
}

impl RemoteRef {
    /// Parses a ref that starts with `@`; the error string says what is wrong.
    pub fn parse(reference: &str) -> Result<RemoteRef, String> {
        let body = reference
            .strip_prefix('@')
            .ok_or_else(|| "a remote ref starts with `@`".to_string())?;
        // The version follows the last `:` *after* the last `/` (hosts carry no ports here).
        let last_slash = body.rfind('/').unwrap_or(0);
        let (path, version) = match body[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                let v = &body[at + 1..];
                if v.is_empty() {
                    return Err("empty version after `:`".to_string());
                }
                (&body[..at], Some(v.to_string()))
            }
            None => (body, None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 4 {
            return Err("expected `@<host>/<org>/<repo>/<path to layer>[:<version>]`".to_string());
        }
        for seg in &segments {
            if seg.is_empty() || *seg == "." || *seg == ".." {
                return Err(format!("bad path segment `{seg}`"));
            }
        }
        if let Some(v) = &version {
            if v.contains('/') || v == ".." || v.starts_with('-') {
                return Err(format!("bad version `{v}`"));
            }
        }
        Ok(RemoteRef {
            host: segments[0].to_string(),
            org: segments[1].to_string(),
            repo: segments[2].to_string(),
            sub_path: segments[3..].join("/"),
            version,
        })
    }

    /// The key the layer is stored under in a [`Layers`] map: `host/org/repo/sub/path`.
    pub fn bare_key(&self) -> String {
        format!("{}/{}/{}/{}", self.host, self.org, self.repo, self.sub_path)
    }

    /// The layer's name (last path segment).
    pub fn name(&self) -> &str {
        self.sub_path.rsplit('/').next().unwrap_or(&self.sub_path)
    }

    /// The repository's directory inside the cache: `host/org/repo@version` (`None` if unpinned).
    pub fn repo_dir(&self) -> Option<String> {
        self.version
            .as_ref()
            .map(|v| format!("{}/{}/{}@{}", self.host, self.org, self.repo, v))
    }

    /// The layer's directory under the cache root `cache`.
    pub fn layer_dir(&self, cache: &Path) -> Option<PathBuf> {
        self.repo_dir().map(|d| cache.join(d).join(&self.sub_path))
    }

    /// The command that fills the cache for this ref.
    fn fetch_command(&self, cache: Option<&Path>) -> String {
        let version = self.version.as_deref().unwrap_or("HEAD");
        let repo_dir = self.repo_dir().unwrap_or_default();
        let dest = match cache {
            Some(root) => root.join(&repo_dir).display().to_string(),
            None => format!("\"${{OV_REPO_CACHE:-$HOME/.cache/ov/repos}}/{repo_dir}\""),
        };
        format!(
            "git clone --depth 1 --branch {version} https://{}/{}/{}.git {dest}",
            self.host, self.org, self.repo
        )
    }
}

/// Orders `requested` and everything it needs; see the module docs. Same as [`resolve_with`] with
/// default options.
pub fn resolve(layers: &Layers, requested: &[String]) -> Result<Vec<String>, ResolveError> {
    resolve_with(layers, requested, &ResolveOptions::default())
}

/// Orders `requested` and everything it needs into one de-duplicated install order.
pub fn resolve_with(
    layers: &Layers,
    requested: &[String],
    opts: &ResolveOptions,
) -> Result<Vec<String>, ResolveError> {
    let r = Resolver { layers, opts };
    let (visited, rank) = r.closure(requested)?;
    r.check_composition(&visited)?;

    // Edges (dep → layer) among the layers that stay.
    let mut targets_memo: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, layer) in &visited {
        if vanishes(layer) {
            continue;
        }
        let mut set = BTreeSet::new();
        for reference in layer.depends.iter().chain(&layer.layers) {
            let (dep, _) = r.lookup(reference, Some(key))?;
            let mut stack = Vec::new();
            set.extend(r.targets(&dep, &mut targets_memo, &mut stack)?);
        }
        deps.insert(key.clone(), set);
    }
    match kahn(&deps, &rank) {
        Some(order) => Ok(order),
        // Every cycle among the redirected edges follows a cycle of the written edges (edges only
        // ever run *through* vanishing composers), so report the written one.
        None => match r.find_cycle(&visited, |l| l.depends.iter().chain(&l.layers).collect())? {
            Some(cycle) => Err(ResolveError::CircularDependency { cycle }),
            None => Err(ResolveError::CircularDependency {
                cycle: deps.keys().cloned().collect(),
            }),
        },
    }
}

/// A composing layer without content of its own: it is replaced by its members.
fn vanishes(layer: &Layer) -> bool {
    !layer.layers.is_empty() && !layer.has_content()
}

struct Resolver<'a> {
    layers: &'a Layers,
    opts: &'a ResolveOptions,
}

impl<'a> Resolver<'a> {
    /// Finds the layer a reference names; returns its key in `self.layers`.
    fn lookup(
        &self,
        reference: &str,
        required_by: Option<&str>,
    ) -> Result<(String, &'a Layer), ResolveError> {
        let by = required_by.map(str::to_string);
        if reference.starts_with('@') {
            let remote =
                RemoteRef::parse(reference).map_err(|reason| ResolveError::InvalidRemoteRef {
                    reference: reference.to_string(),
                    required_by: by.clone(),
                    reason,
                })?;
            let key = remote.bare_key();
            if let Some(layer) = self.layers.get(&key) {
                return Ok((key, layer));
            }
            let Some(repo_dir) = remote.repo_dir() else {
                return Err(ResolveError::RemoteUnpinned {
                    reference: reference.to_string(),
                    required_by: by,
                });
            };
            let cache = self.opts.repo_cache.as_deref();
            if let Some(dir) = cache.and_then(|c| remote.layer_dir(c)) {
                if dir.join("layer.yml").is_file() {
                    return Err(ResolveError::RemoteNotLoaded {
                        reference: reference.to_string(),
                        path: dir,
                    });
                }
            }
            return Err(ResolveError::RemoteNotCached {
                reference: reference.to_string(),
                required_by: by,
                cache_dir: cache.map(Path::to_path_buf),
                repo_dir,
                fetch: remote.fetch_command(cache),
            });
        }
        if let Some(layer) = self.layers.get(reference) {
            return Ok((reference.to_string(), layer));
        }
        // `name:version` of a local layer: the version is informational (the original's BareRef).
        if let Some((bare, _)) = reference.split_once(':') {
            if let Some(layer) = self.layers.get(bare) {
                return Ok((bare.to_string(), layer));
            }
        }
        Err(ResolveError::UnknownLayer {
            name: reference.to_string(),
            required_by: by,
            suggestions: suggest(reference, self.layers.keys()),
        })
    }

    /// Every layer reachable from the request over `layers:` and `depends:` (vanishing ones too),
    /// and each one's rank: the index of the first request whose closure holds it.
    #[allow(clippy::type_complexity)]
    fn closure(
        &self,
        requested: &[String],
    ) -> Result<(BTreeMap<String, &'a Layer>, BTreeMap<String, usize>), ResolveError> {
        let mut visited: BTreeMap<String, &'a Layer> = BTreeMap::new();
        let mut rank: BTreeMap<String, usize> = BTreeMap::new();
        // Depth-first in written order, so the first unknown name reported is the first one met;
        // request `i`'s closure is walked completely before request `i + 1` is looked at, so the
        // first visit of a layer is by the first request that needs it.
        for (i, first) in requested.iter().enumerate() {
            let mut stack: Vec<(String, Option<String>)> = vec![(first.clone(), None)];
            while let Some((reference, by)) = stack.pop() {
                let (key, layer) = self.lookup(&reference, by.as_deref())?;
                if visited.contains_key(&key) {
                    continue;
                }
                visited.insert(key.clone(), layer);
                rank.insert(key.clone(), i);
                for next in layer.layers.iter().chain(&layer.depends).rev() {
                    stack.push((next.clone(), Some(key.clone())));
                }
            }
        }
        Ok((visited, rank))
    }

    /// Rejects cycles made of `layers:` edges alone.
    fn check_composition(&self, visited: &BTreeMap<String, &'a Layer>) -> Result<(), ResolveError> {
        match self.find_cycle(visited, |l| l.layers.iter().collect())? {
            Some(cycle) => Err(ResolveError::CircularComposition { cycle }),
            None => Ok(()),
        }
    }

    /// The first cycle (smallest start, edges in written order) over the edges `edges` picks from
    /// each layer, as `a -> b -> a`.
    fn find_cycle(
        &self,
        visited: &BTreeMap<String, &'a Layer>,
        edges: impl Fn(&'a Layer) -> Vec<&'a String>,
    ) -> Result<Option<Vec<String>>, ResolveError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Active,
            Done,
        }
        let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
        for start in visited.keys() {
            if marks.contains_key(start) {
                continue;
            }
            // Iterative DFS: (node, index of the next edge to follow).
            let mut path: Vec<(String, usize)> = vec![(start.clone(), 0)];
            marks.insert(start.clone(), Mark::Active);
            while let Some((node, idx)) = path.last().cloned() {
                let next = visited
                    .get(&node)
                    .map(|l| edges(l))
                    .unwrap_or_default()
                    .get(idx)
                    .map(|s| s.to_string());
                let Some(reference) = next else {
                    marks.insert(node, Mark::Done);
                    path.pop();
                    continue;
                };
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                let (child, _) = self.lookup(&reference, Some(&node))?;
                match marks.get(&child) {
                    Some(Mark::Done) => {}
                    Some(Mark::Active) => {
                        let from = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.clone()).collect();
                        cycle.push(child);
                        return Ok(Some(cycle));
                    }
                    None => {
                        marks.insert(child.clone(), Mark::Active);
                        path.push((child, 0));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The layers an edge to `key` really points at: `key` itself, or — when it vanishes — its
    /// members' and dependencies' targets. `stack` holds the chain being expanded, to report a
    /// dependency cycle that runs through vanishing composers.
    fn targets(
        &self,
        key: &str,
        memo: &mut BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
    ) -> Result<BTreeSet<String>, ResolveError> {
        if let Some(done) = memo.get(key) {
            return Ok(done.clone());
        }
        let Some(layer) = self.layers.get(key) else {
            // Keys come from `lookup`, so this is unreachable; answer with the key itself.
            return Ok(BTreeSet::from([key.to_string()]));
        };
        if !vanishes(layer) {
            return Ok(BTreeSet::from([key.to_string()]));
        }
        if let Some(pos) = stack.iter().position(|k| k == key) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(key.to_string());
            return Err(ResolveError::CircularDependency { cycle });
        }
        stack.push(key.to_string());
        let mut out = BTreeSet::new();
        for reference in layer.layers.iter().chain(&layer.depends) {
            let (member, _) = self.lookup(reference, Some(key))?;
            out.extend(self.targets(&member, memo, stack)?);
        }
        stack.pop();
        memo.insert(key.to_string(), out.clone());
        Ok(out)
    }
}

/// Kahn's algorithm over `deps` (layer → what must come before it) with a ready queue ordered by
/// (`rank`, name); `None` when a cycle leaves nodes unplaced.
fn kahn(
    deps: &BTreeMap<String, BTreeSet<String>>,
    rank: &BTreeMap<String, usize>,
) -> Option<Vec<String>> {
    let mut indegree: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, ds) in deps {
        indegree.insert(node, ds.len());
        for d in ds {
            dependents.entry(d.as_str()).or_default().push(node);
        }
    }
    // Every key of `deps` was visited, so it has a rank; the fallback only keeps this total.
    let key = |n: &'_ str| -> usize { rank.get(n).copied().unwrap_or(usize::MAX) };
    let mut ready: BTreeSet<(usize, &str)> = indegree
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| (key(k), *k))
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some((_, node)) = ready.pop_first() {
        order.push(node.to_string());
        for dependent in dependents.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(n) = indegree.get_mut(dependent) {
                *n -= 1;
                if *n == 0 {
                    ready.insert((key(dependent), dependent));
                }
            }
        }
    }
    (order.len() == deps.len()).then_some(order)
}

/// Up to three known names close to `name` (edit distance), best first.
pub fn suggest<'k>(name: &str, known: impl Iterator<Item = &'k String>) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = known
        .filter_map(|k| {
            let d = strsim::levenshtein(name, k);
            let contains = k.contains(name) || name.contains(k.as_str());
            (d <= limit || (contains && name.len() >= 3)).then_some((d, k))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, k)| k.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer with content (one env var) unless `content` is false.
    fn layer(name: &str, depends: &[&str], members: &[&str], content: bool) -> Layer {
        Layer {
            name: name.to_string(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            layers: members.iter().map(|s| s.to_string()).collect(),
            env: if content {
                vec![("X".to_string(), "1".to_string())]
            } else {
                Vec::new()
            },
            ..Layer::default()
        }
    }

    fn set(layers: Vec<Layer>) -> Layers {
        layers.into_iter().map(|l| (l.name.clone(), l)).collect()
    }

    fn req(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A layer with content and no dependencies or members.
    fn leaf(name: &str) -> Layer {
        layer(name, &[], &[], true)
    }

    /// The message of the error resolving `names` gives (the test fails if it resolves).
    fn error(ls: &Layers, names: &[&str]) -> String {
        resolve(ls, &req(names)).unwrap_err().to_string()
    }

    /// The order `names` resolves to (the test fails if it does not resolve).
    fn order(ls: &Layers, names: &[&str]) -> Vec<String> {
        resolve(ls, &req(names)).unwrap()
    }

    #[test]
    fn within_one_request_ready_layers_go_by_name_not_declaration_order() {
        let ls = set(vec![
            layer("app", &["zeta", "alpha", "mid"], &[], true),
            leaf("zeta"),
            layer("alpha", &["zeta"], &[], true),
            leaf("mid"),
        ]);
        assert_eq!(order(&ls, &["app"]), ["mid", "zeta", "alpha", "app"]);
    }

    #[test]
    fn earlier_request_with_its_dependencies_comes_before_a_later_one() {
        // The corpus shape: `python` needs `pixi`; `jupyter-mcp` needs nothing, and its name sorts
        // before both. Requested python first, python's part comes first.
        let ls = set(vec![
            layer("python", &["pixi"], &[], true),
            leaf("pixi"),
            leaf("jupyter-mcp"),
        ]);
        assert_eq!(
            order(&ls, &["python", "jupyter-mcp"]),
            ["pixi", "python", "jupyter-mcp"]
        );
        assert_eq!(
            order(&ls, &["jupyter-mcp", "python"]),
            ["jupyter-mcp", "pixi", "python"]
        );
    }

    #[test]
    fn several_requests_give_one_deduplicated_order() {
        let ls = set(vec![
            layer("a", &["shared"], &[], true),
            layer("b", &["shared"], &[], true),
            leaf("shared"),
        ]);
        // Each layer once, at the place of the first request that needs it.
        assert_eq!(order(&ls, &["b", "a", "b", "shared"]), ["shared", "b", "a"]);
        assert_eq!(order(&ls, &["a", "b"]), ["shared", "a", "b"]);
    }

    #[test]
    fn dependencies_come_first_whatever_the_request_order() {
        let ls = set(vec![layer("app", &["base"], &[], true), leaf("base")]);
        assert_eq!(order(&ls, &["app", "base"]), ["base", "app"]);
    }

    #[test]
    fn a_later_request_orders_only_what_is_new_by_name() {
        // `late` needs `k` (already placed by the first request), `b` (needs `k`) and `c`.
        // `b` and `c` are both ready once the first request is placed: by name, `b` first.
        let ls = set(vec![
            layer("first", &["k"], &[], true),
            leaf("k"),
            layer("late", &["c", "b"], &[], true),
            layer("b", &["k"], &[], true),
            leaf("c"),
        ]);
        assert_eq!(
            order(&ls, &["first", "late"]),
            ["k", "first", "b", "c", "late"]
        );
    }

    #[test]
    fn members_of_a_requested_vanishing_composer_take_its_place() {
        let ls = set(vec![
            layer("bundle", &[], &["x", "y"], false),
            leaf("x"),
            leaf("y"),
            leaf("a"),
        ]);
        assert_eq!(order(&ls, &["bundle", "a"]), ["x", "y", "a"]);
        assert_eq!(order(&ls, &["a", "bundle"]), ["a", "x", "y"]);
    }

    #[test]
    fn content_less_composer_vanishes_and_edges_go_to_members() {
        let ls = set(vec![
            layer("bundle", &[], &["x", "y"], false),
            leaf("x"),
            layer("y", &["base"], &[], true),
            leaf("base"),
            layer("user", &["bundle"], &[], true),
        ]);
        assert_eq!(order(&ls, &["bundle"]), ["base", "x", "y"]);
        // `user` depends on the composer ⇒ after both members.
        assert_eq!(order(&ls, &["user"]), ["base", "x", "y", "user"]);
    }

    #[test]
    fn nested_content_less_composers_vanish_recursively() {
        let ls = set(vec![
            layer("outer", &[], &["inner", "c"], false),
            layer("inner", &[], &["a", "b"], false),
            leaf("a"),
            leaf("b"),
            leaf("c"),
            layer("top", &["outer"], &[], true),
        ]);
        assert_eq!(order(&ls, &["top"]), ["a", "b", "c", "top"]);
    }

    #[test]
    fn composer_with_content_stays_after_its_members() {
        let ls = set(vec![
            layer("desk", &[], &["wm", "bar"], true),
            leaf("wm"),
            layer("bar", &["wm"], &[], true),
        ]);
        assert_eq!(order(&ls, &["desk"]), ["wm", "bar", "desk"]);
    }

    #[test]
    fn vanishing_composer_keeps_its_own_depends() {
        let ls = set(vec![
            layer("chrome-kwin", &["kwin"], &["chrome"], false),
            leaf("chrome"),
            leaf("kwin"),
            layer("desk", &["chrome-kwin"], &[], true),
        ]);
        assert_eq!(order(&ls, &["chrome-kwin"]), ["chrome", "kwin"]);
        assert_eq!(order(&ls, &["desk"]), ["chrome", "kwin", "desk"]);
    }

    #[test]
    fn content_less_layer_without_members_is_kept() {
        // Only composers vanish; a layer with nothing but `depends:` still appears.
        let ls = set(vec![layer("meta", &["a"], &[], false), leaf("a")]);
        assert_eq!(order(&ls, &["meta"]), ["a", "meta"]);
    }

    #[test]
    fn cycles_are_reported_as_a_chain() {
        let cases = [
            // A dependency cycle, entered from a layer outside it.
            (
                vec![
                    layer("a", &["b"], &[], true),
                    layer("b", &["c"], &[], true),
                    layer("c", &["a"], &[], true),
                    layer("d", &["a"], &[], true),
                ],
                "d",
                "circular dependency: `a` -> `b` -> `c` -> `a`",
            ),
            // A layer that depends on itself.
            (
                vec![layer("a", &["a"], &[], true)],
                "a",
                "circular dependency: `a` -> `a`",
            ),
            // Two composers that compose each other.
            (
                vec![
                    layer("p", &[], &["q"], false),
                    layer("q", &[], &["p"], false),
                ],
                "p",
                "circular layer composition: `p` -> `q` -> `p`",
            ),
            // Through a composer that vanishes.
            (
                vec![
                    layer("comp", &["a"], &["m"], false),
                    leaf("m"),
                    layer("a", &["comp"], &[], true),
                ],
                "a",
                "circular dependency: `a` -> `comp` -> `a`",
            ),
            // Between two vanishing composers (the search terminates).
            (
                vec![
                    layer("c1", &["c2"], &["m"], false),
                    layer("c2", &["c1"], &["m"], false),
                    leaf("m"),
                    layer("top", &["c1"], &[], true),
                ],
                "top",
                "circular dependency: `c1` -> `c2` -> `c1`",
            ),
        ];
        for (layers, request, message) in cases {
            assert_eq!(error(&set(layers), &[request]), message, "{request}");
        }
    }

    #[test]
    fn unknown_requested_layer_suggests_close_names() {
        let ls = set(vec![leaf("ripgrep"), leaf("nodejs")]);
        assert_eq!(
            error(&ls, &["ripgre"]),
            "unknown layer `ripgre` (requested); did you mean `ripgrep`?"
        );
        assert_eq!(
            error(&ls, &["zzzzzzzz"]),
            "unknown layer `zzzzzzzz` (requested)"
        );
    }

    #[test]
    fn unknown_dependency_names_the_requirer() {
        let ls = set(vec![layer("app", &["nodjs"], &[], true), leaf("nodejs")]);
        assert_eq!(
            error(&ls, &["app"]),
            "unknown layer `nodjs` (required by `app`); did you mean `nodejs`?"
        );
    }

    #[test]
    fn local_version_suffix_is_ignored() {
        let ls = set(vec![layer("app", &["base:1.2"], &[], true), leaf("base")]);
        assert_eq!(order(&ls, &["app"]), ["base", "app"]);
    }

    #[test]
    fn remote_ref_parses() {
        let r = RemoteRef::parse("@github.com/org/repo/layers/pixi:v1.2.0").unwrap();
        assert_eq!(r.bare_key(), "github.com/org/repo/layers/pixi");
        assert_eq!(r.name(), "pixi");
        assert_eq!(r.repo_dir().unwrap(), "github.com/org/repo@v1.2.0");
        assert!(RemoteRef::parse("@github.com/org").is_err());
        assert!(RemoteRef::parse("@github.com/org/repo/../x:v1").is_err());
        assert!(RemoteRef::parse("@github.com/org/repo/layers/x:").is_err());
    }

    /// `app`, which depends on the remote layer `@github.com/o/r/layers/x:v1`.
    fn app_needing_remote_x() -> Layers {
        set(vec![layer(
            "app",
            &["@github.com/o/r/layers/x:v1"],
            &[],
            true,
        )])
    }

    #[test]
    fn remote_ref_found_under_its_bare_key() {
        let mut ls = app_needing_remote_x();
        let remote = leaf("github.com/o/r/layers/x");
        ls.insert(remote.name.clone(), remote);
        assert_eq!(order(&ls, &["app"]), ["github.com/o/r/layers/x", "app"]);
    }

    #[test]
    fn missing_remote_ref_names_cache_dir_and_fetch_command() {
        let ls = app_needing_remote_x();
        let opts = ResolveOptions {
            repo_cache: Some(PathBuf::from("/cache")),
        };
        let err = resolve_with(&ls, &req(&["app"]), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("remote layer `@github.com/o/r/layers/x:v1` (required by `app`) is not in the repo cache"), "{msg}");
        assert!(msg.contains("/cache/github.com/o/r@v1"), "{msg}");
        assert!(
            msg.contains("git clone --depth 1 --branch v1 https://github.com/o/r.git /cache/github.com/o/r@v1"),
            "{msg}"
        );
        // Without a cache root the message still says where to look.
        let msg = resolve(&ls, &req(&["app"])).unwrap_err().to_string();
        assert!(msg.contains("$OV_REPO_CACHE/github.com/o/r@v1"), "{msg}");
    }

    #[test]
    fn cached_but_unloaded_remote_layer_is_distinguished() {
        let dir = tempfile::tempdir().unwrap();
        let layer_dir = dir.path().join("github.com/o/r@v1/layers/x");
        std::fs::create_dir_all(&layer_dir).unwrap();
        std::fs::write(layer_dir.join("layer.yml"), "layer: {}\n").unwrap();
        let ls = app_needing_remote_x();
        let opts = ResolveOptions {
            repo_cache: Some(dir.path().to_path_buf()),
        };
        let err = resolve_with(&ls, &req(&["app"]), &opts).unwrap_err();
        assert!(matches!(err, ResolveError::RemoteNotLoaded { .. }), "{err}");
    }

    #[test]
    fn unpinned_remote_ref_asks_for_a_version() {
        let ls = set(vec![layer("app", &["@github.com/o/r/layers/x"], &[], true)]);
        let err = resolve(&ls, &req(&["app"])).unwrap_err();
        assert!(matches!(err, ResolveError::RemoteUnpinned { .. }), "{err}");
    }

    #[test]
    fn empty_request_is_an_empty_order() {
        assert!(resolve(&Layers::new(), &[]).unwrap().is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Acyclic random projects: layer `i` may only name layers `< i`; names are a random
        /// permutation so that name order and dependency order are unrelated.
        fn project() -> impl Strategy<Value = (Layers, Vec<String>)> {
            (2usize..14)
                .prop_flat_map(|n| {
                    let layers = proptest::collection::vec(
                        (
                            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                            any::<bool>(),
                        ),
                        n,
                    );
                    let req = proptest::collection::vec(any::<prop::sample::Index>(), 1..4);
                    let perm = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
                    (layers, req, perm)
                })
                .prop_map(|(specs, req, perm)| {
                    let name = |i: usize| format!("l{:02}", perm[i]);
                    let mut ls = Layers::new();
                    for (i, (deps, members, content)) in specs.iter().enumerate() {
                        let pick = |ix: &Vec<prop::sample::Index>| -> Vec<String> {
                            if i == 0 {
                                return Vec::new();
                            }
                            let mut v: Vec<String> = ix.iter().map(|x| name(x.index(i))).collect();
                            v.sort();
                            v.dedup();
                            v
                        };
                        let (d, m) = (pick(deps), pick(members));
                        let refs: Vec<&str> = d.iter().map(String::as_str).collect();
                        let mems: Vec<&str> = m.iter().map(String::as_str).collect();
                        let l = layer(&name(i), &refs, &mems, *content);
                        ls.insert(l.name.clone(), l);
                    }
                    let n = specs.len();
                    let req = req.iter().map(|x| name(x.index(n))).collect();
                    (ls, req)
                })
        }

        proptest! {
            #[test]
            fn order_is_a_deterministic_topological_order_of_what_stays((ls, req) in project()) {
                let order = resolve(&ls, &req).unwrap();
                // Request by request: what the first `i` requests need is a prefix of the order,
                // and adding a request only appends.
                for i in 1..req.len() {
                    let head = resolve(&ls, &req[..i]).unwrap();
                    prop_assert_eq!(&order[..head.len()], &head[..]);
                }
                // No duplicates, no vanishing composers.
                let set: BTreeSet<&String> = order.iter().collect();
                prop_assert_eq!(set.len(), order.len());
                for n in &order {
                    prop_assert!(!vanishes(&ls[n]));
                }
                // Everything requested that stays is there.
                for r in &req {
                    prop_assert!(vanishes(&ls[r]) || order.contains(r));
                }
                // Every edge (through vanishing composers) points backwards.
                let pos = |n: &str| order.iter().position(|x| x == n);
                fn stays(ls: &Layers, n: &str, out: &mut Vec<String>) {
                    let l = &ls[n];
                    if vanishes(l) {
                        for m in l.layers.iter().chain(&l.depends) {
                            stays(ls, m, out);
                        }
                    } else {
                        out.push(n.to_string());
                    }
                }
                for (i, n) in order.iter().enumerate() {
                    let l = &ls[n];
                    for d in l.depends.iter().chain(&l.layers) {
                        let mut targets = Vec::new();
                        stays(&ls, d, &mut targets);
                        for t in targets {
                            let tp = pos(&t);
                            prop_assert!(tp.is_some_and(|p| p < i), "{} must precede {}", t, n);
                        }
                    }
                }
            }
        }
    }
}
