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
//! Remote refs (`@github.com/org/repo/layers/x:ver`) name the layer loaded from that repository
//! under its own name (see [`crate::repo`]: the runner fetches, `repo::load_remote_layers` reads
//! the checkouts). This module never fetches: a remote ref whose layer was not loaded is an error
//! that says to run `ov fetch`.

use crate::layer::{Layer, Layers};
use crate::origin::{RefError, RemoteRef};
use std::collections::{BTreeMap, BTreeSet};

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
    #[error("{source} ({})", required_by_text(required_by.as_deref()))]
    InvalidRemoteRef {
        /// Who named it.
        required_by: Option<String>,
        #[source]
        source: RefError,
    },
    /// A remote ref whose layer is not in the project: it was not fetched and loaded.
    #[error(
        "remote layer `{reference}` ({}) was not loaded; fetch it with `ov fetch` (or compile without `--offline`)",
        required_by_text(required_by.as_deref())
    )]
    RemoteNotLoaded {
        /// The ref as written.
        reference: String,
        /// Who named it.
        required_by: Option<String>,
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

/// Orders `requested` and everything it needs into one de-duplicated install order; see the
/// module docs.
pub fn resolve(layers: &Layers, requested: &[String]) -> Result<Vec<String>, ResolveError> {
    let r = Resolver { layers };
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
            let remote = RemoteRef::parse_at(reference).map_err(|source| {
                ResolveError::InvalidRemoteRef {
                    required_by: by.clone(),
                    source,
                }
            })?;
            // Loaded under its own name, with where it came from; a layer of that name from
            // elsewhere is not this one.
            let name = remote.name();
            if let Some((key, layer)) = self.layers.get_key_value(name) {
                let same = layer
                    .remote
                    .as_ref()
                    .is_some_and(|src| src.at.repo == remote.at.repo && src.path == remote.path);
                if same {
                    return Ok((key.clone(), layer));
                }
            }
            return Err(ResolveError::RemoteNotLoaded {
                reference: reference.to_string(),
                required_by: by,
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

    /// `app`, which depends on the remote layer `@github.com/o/r/layers/x:v1`.
    fn app_needing_remote_x() -> Layers {
        set(vec![layer(
            "app",
            &["@github.com/o/r/layers/x:v1"],
            &[],
            true,
        )])
    }

    /// The layer `x` as loaded from `repo` at `path`.
    fn remote_x(repo: &str, path: &str) -> Layer {
        let at = crate::origin::RepoRef::parse(&format!("{repo}@v1")).unwrap();
        Layer {
            remote: Some(crate::origin::RemoteSource {
                at,
                commit: "1".repeat(40),
                path: path.to_string(),
                checkout: std::path::PathBuf::from("/cache/x"),
            }),
            ..leaf("x")
        }
    }

    #[test]
    fn remote_ref_finds_the_loaded_layer_under_its_name() {
        let mut ls = app_needing_remote_x();
        ls.insert("x".into(), remote_x("github.com/o/r", "layers/x"));
        assert_eq!(order(&ls, &["app"]), ["x", "app"]);
        // Requested directly, in the layer-file form.
        assert_eq!(order(&ls, &["@github.com/o/r/layers/x:v1"]), ["x"]);
    }

    #[test]
    fn remote_ref_is_not_a_layer_of_the_same_name_from_elsewhere() {
        let not_loaded = "remote layer `@github.com/o/r/layers/x:v1` (required by `app`) was not loaded; fetch it with `ov fetch` (or compile without `--offline`)";
        // Nothing named `x`.
        assert_eq!(error(&app_needing_remote_x(), &["app"]), not_loaded);
        // A local `x`.
        let mut ls = app_needing_remote_x();
        ls.insert("x".into(), leaf("x"));
        assert_eq!(error(&ls, &["app"]), not_loaded);
        // `x` of another repository, or another path.
        for (repo, path) in [("github.com/o/other", "layers/x"), ("github.com/o/r", "x")] {
            let mut ls = app_needing_remote_x();
            ls.insert("x".into(), remote_x(repo, path));
            assert_eq!(error(&ls, &["app"]), not_loaded, "{repo} {path}");
        }
    }

    #[test]
    fn invalid_remote_ref_names_the_requirer() {
        let ls = set(vec![layer("app", &["@github.com/o"], &[], true)]);
        let msg = error(&ls, &["app"]);
        assert!(
            msg.starts_with("invalid remote layer ref `@github.com/o`: expected"),
            "{msg}"
        );
        assert!(msg.ends_with("(required by `app`)"), "{msg}");
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
