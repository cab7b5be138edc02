//! Stage `inventory`, the model every source fills: groups with their direct hosts, children and
//! vars, hosts with their own vars — then Ansible's reconciliation (top-level groups under `all`,
//! `ungrouped` for hosts in no other group) and variable merge (`all`, then groups by depth,
//! `ansible_group_priority` and name, host vars last; a later value replaces an earlier one whole).
//! Invariant: the group graph is acyclic (a cycle is refused where it is made), so every walk
//! over it ends; hosts come out in the order Ansible lists `all`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use indexmap::IndexMap;
use serde_json::Value;

use super::{Group, Host, Inventory, InventoryError};

/// A source's hosts and groups, in the order they were first seen (Ansible's dict order).
#[derive(Debug, Clone)]
pub(crate) struct Builder {
    pub groups: IndexMap<String, Group>,
    pub hosts: IndexMap<String, BTreeMap<String, Value>>,
}

/// Why an edge between two groups cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EdgeError {
    /// `child` is `parent` itself or one of its ancestors.
    Cycle,
}

impl Builder {
    /// An inventory holding only `all` and its child `ungrouped`, as Ansible starts.
    pub fn new() -> Builder {
        let mut b = Builder {
            groups: IndexMap::new(),
            hosts: IndexMap::new(),
        };
        b.add_group("all");
        b.add_group("ungrouped");
        b.add_child("all", "ungrouped")
            .expect("`ungrouped` under `all` is no cycle");
        b
    }

    pub fn add_group(&mut self, name: &str) {
        if !self.groups.contains_key(name) {
            self.groups.insert(
                name.to_string(),
                Group {
                    name: name.to_string(),
                    hosts: Vec::new(),
                    children: Vec::new(),
                    parents: Vec::new(),
                    vars: BTreeMap::new(),
                    priority: 1,
                },
            );
        }
    }

    /// Add `host` (if new) and make it a direct member of `group` (which must exist); a port
    /// given with the host's first mention becomes its `ansible_port`, as in Ansible.
    pub fn add_host(&mut self, host: &str, group: &str, port: Option<u16>) {
        if !self.hosts.contains_key(host) {
            let mut vars = BTreeMap::new();
            if let Some(p) = port {
                vars.insert("ansible_port".to_string(), Value::from(p));
            }
            self.hosts.insert(host.to_string(), vars);
        }
        let g = self.groups.get_mut(group).expect("group added first");
        if !g.hosts.iter().any(|h| h == host) {
            g.hosts.push(host.to_string());
        }
    }

    pub fn set_host_var(&mut self, host: &str, key: &str, value: Value) {
        if let Some(vars) = self.hosts.get_mut(host) {
            vars.insert(key.to_string(), value);
        }
    }

    /// Set a group variable; `ansible_group_priority` is the group's priority instead (Ansible
    /// reads it as an integer). `Err` when that priority is no integer.
    pub fn set_group_var(&mut self, group: &str, key: &str, value: Value) -> Result<(), String> {
        let g = self.groups.get_mut(group).expect("group added first");
        if key == "ansible_group_priority" {
            let p = match &value {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            g.priority = p.ok_or_else(|| {
                format!("`ansible_group_priority` must be an integer, not `{value}`")
            })?;
        } else {
            g.vars.insert(key.to_string(), value);
        }
        Ok(())
    }

    /// Make `child` a child group of `parent` (both exist).
    pub fn add_child(&mut self, parent: &str, child: &str) -> Result<(), EdgeError> {
        if parent == child || self.ancestors(parent).contains(child) {
            return Err(EdgeError::Cycle);
        }
        let p = self.groups.get_mut(parent).expect("parent added first");
        if !p.children.iter().any(|c| c == child) {
            p.children.push(child.to_string());
        }
        let c = self.groups.get_mut(child).expect("child added first");
        if !c.parents.iter().any(|q| q == parent) {
            c.parents.push(parent.to_string());
        }
        Ok(())
    }

    fn ancestors(&self, group: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo = vec![group.to_string()];
        while let Some(g) = todo.pop() {
            for p in &self.groups[g.as_str()].parents {
                if seen.insert(p.clone()) {
                    todo.push(p.clone());
                }
            }
        }
        seen
    }

    /// Ansible's reconciliation, then the merged view. A name that is both a host and a group
    /// is refused (Ansible warns, then gives the host's inline variables to the group).
    pub fn finish(mut self, source: std::path::PathBuf) -> Result<Inventory, InventoryError> {
        if let Some(name) = self
            .hosts
            .keys()
            .find(|h| self.groups.contains_key(h.as_str()))
        {
            return Err(InventoryError::Ambiguous {
                path: source,
                name: name.clone(),
            });
        }
        let tops: Vec<String> = self
            .groups
            .iter()
            .filter(|(n, g)| n.as_str() != "all" && g.parents.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for g in tops {
            self.add_child("all", &g)
                .expect("a group without parents under `all` is no cycle");
        }
        let host_names: Vec<String> = self.hosts.keys().cloned().collect();
        let direct = self.direct_groups();
        for h in &host_names {
            let groups = direct.get(h).cloned().unwrap_or_default();
            let others = groups
                .iter()
                .any(|g| g.as_str() != "all" && g.as_str() != "ungrouped");
            if groups.iter().any(|g| g == "ungrouped") {
                if others {
                    self.groups["ungrouped"].hosts.retain(|x| x != h);
                }
            } else if !others {
                self.add_host(h, "ungrouped", None);
            }
        }
        let depth = self.depths();
        let order = self.host_order();
        let mut hosts = Vec::with_capacity(order.len());
        let direct = self.direct_groups();
        for name in order {
            let mut groups: BTreeSet<String> = BTreeSet::new();
            for g in direct.get(&name).into_iter().flatten() {
                groups.insert(g.clone());
                groups.extend(self.ancestors(g));
            }
            groups.insert("all".to_string());
            let mut sorted: Vec<&String> = groups.iter().collect();
            sorted.sort_by(|a, b| {
                let (ga, gb) = (&self.groups[a.as_str()], &self.groups[b.as_str()]);
                (depth[a.as_str()], ga.priority, a.as_str()).cmp(&(
                    depth[b.as_str()],
                    gb.priority,
                    b.as_str(),
                ))
            });
            let mut vars = BTreeMap::new();
            for g in sorted {
                for (k, v) in &self.groups[g.as_str()].vars {
                    vars.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in &self.hosts[name.as_str()] {
                vars.insert(k.clone(), v.clone());
            }
            groups.remove("all");
            hosts.push(Host { name, vars, groups });
        }
        Ok(Inventory {
            source,
            hosts,
            groups: self.groups,
        })
    }

    /// Host → the groups that hold it directly.
    fn direct_groups(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (g, data) in &self.groups {
            for h in &data.hosts {
                out.entry(h.clone()).or_default().push(g.clone());
            }
        }
        out
    }

    /// Each group's depth: the longest path from `all` (Ansible's `Group.depth`).
    fn depths(&self) -> HashMap<&str, usize> {
        // Kahn's order from `all`; the graph is acyclic by construction.
        let mut indegree: HashMap<&str, usize> = self
            .groups
            .iter()
            .map(|(n, g)| (n.as_str(), g.parents.len()))
            .collect();
        let mut depth: HashMap<&str, usize> = self.groups.keys().map(|n| (n.as_str(), 0)).collect();
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        while let Some(g) = ready.pop() {
            for c in &self.groups[g].children {
                let d = depth[g] + 1;
                let e = depth.get_mut(c.as_str()).expect("child exists");
                *e = (*e).max(d);
                let n = indegree.get_mut(c.as_str()).expect("child exists");
                *n -= 1;
                if *n == 0 {
                    ready.push(c.as_str());
                }
            }
        }
        depth
    }

    /// The hosts of `group` and its descendants in Ansible's order: the group, its children,
    /// then each further generation (within a generation Ansible's order is its set order; here
    /// it is the order the parents list them), each group's direct hosts in file order.
    pub fn group_hosts(groups: &IndexMap<String, Group>, group: &str) -> Vec<String> {
        let mut ordered: Vec<&str> = vec![group];
        let mut seen: HashSet<&str> = HashSet::from([group]);
        let mut level: Vec<&str> = vec![group];
        while !level.is_empty() {
            let mut next = Vec::new();
            for g in level {
                for c in &groups[g].children {
                    if seen.insert(c.as_str()) {
                        ordered.push(c.as_str());
                        next.push(c.as_str());
                    }
                }
            }
            level = next;
        }
        let mut out = Vec::new();
        let mut have = HashSet::new();
        for g in ordered {
            for h in &groups[g].hosts {
                if have.insert(h.as_str()) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    fn host_order(&self) -> Vec<String> {
        Self::group_hosts(&self.groups, "all")
    }
}
