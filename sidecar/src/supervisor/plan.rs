//! What the supervisor should run: the specs read and parsed into volumes, and
//! the reconcile of what runs against the latest valid spec (pure, with its rules
//! as property tests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::spec::{self, Reading, Volume};

/// What reading and parsing the specs found.
#[derive(Debug)]
pub enum Loaded {
    Volumes(Vec<Volume>),
    /// A source is missing, empty or unreadable: most likely a write caught half-way.
    Unreadable(spec::Invalid),
    /// The sources were read, and they are not a valid spec.
    Invalid(spec::Invalid),
}

/// Reads and parses the specs named by the settings. It can take a while (a
/// large hostile spec): the supervisor runs it off its event loop.
pub fn load_specs(config: &Path, inline: Option<&str>, reading: Reading) -> Loaded {
    match spec::read_sources(config, inline, reading) {
        Err(unreadable) => Loaded::Unreadable(unreadable),
        Ok(sources) => match spec::load(&sources) {
            Ok(mut volumes) => {
                volumes.iter_mut().for_each(resolve_secret_name);
                Loaded::Volumes(volumes)
            }
            Err(invalid) => Loaded::Invalid(invalid),
        },
    }
}

/// A spec read as the pod annotation is written (the kustomize component hands
/// the annotation over through the downward API, with no injection to turn
/// `secretName` into `secretDir`): the Secret of volume `X` is expected where
/// injection would mount it, `/etc/sidemount/secrets/X`. A `secretDir` wins.
pub fn resolve_secret_name(volume: &mut Volume) {
    if volume.secret_name.is_some() && volume.secret_dir.is_none() {
        volume.secret_dir = Some(crate::inject::secret_dir(&volume.name));
    }
}

/// What a reconcile does with each volume.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Running volumes that were removed or changed; a changed one starts
    /// again once its old instance is down.
    pub stop: BTreeSet<String>,
    /// Wanted volumes to start: new, changed, or not running yet.
    pub start: BTreeSet<String>,
    /// Running volumes left as they are.
    pub keep: BTreeSet<String>,
}

/// Decides a reconcile from what runs, what the latest valid spec wants and
/// which of the volumes it would start preflight refused. A volume whose change
/// is refused keeps running as it was: what works is not taken down for what
/// cannot start.
pub fn reconcile(
    running: &BTreeMap<String, Volume>,
    wanted: &BTreeMap<String, Volume>,
    refused: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    for (name, volume) in running {
        match wanted.get(name) {
            Some(new) if new == volume || refused.contains(name) => plan.keep.insert(name.clone()),
            _ => plan.stop.insert(name.clone()),
        };
    }
    plan.start = wanted.keys().filter(|n| !plan.keep.contains(*n) && !refused.contains(*n)).cloned().collect();
    plan
}

/// What a finished read of the specs does: only a valid spec is reconciled;
/// one that is invalid or could not be read keeps every running volume.
pub fn plan_reload(running: &BTreeMap<String, Volume>, loaded: &Loaded, refused: &BTreeSet<String>) -> Plan {
    match loaded {
        Loaded::Volumes(volumes) => reconcile(running, &by_name(volumes), refused),
        Loaded::Unreadable(_) | Loaded::Invalid(_) => {
            Plan { keep: running.keys().cloned().collect(), ..Plan::default() }
        }
    }
}

pub(super) fn by_name(volumes: &[Volume]) -> BTreeMap<String, Volume> {
    volumes.iter().map(|v| (v.name.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    mod reconcile_rules {
        use proptest::prelude::*;

        use super::super::*;

        /// A volume from a small alphabet of names and sources, so running and
        /// wanted sets overlap, and the same name often comes with another source.
        fn volume() -> impl Strategy<Value = Volume> {
            (0..6usize, 0..3usize).prop_map(|(name, source)| {
                spec::validate(&spec::RawVolume {
                    name: Some(format!("v{name}")),
                    kind: Some("fuse".into()),
                    command: Some(vec![format!("daemon{source}"), "{mountpoint}".into()]),
                    ..Default::default()
                })
                .unwrap()
            })
        }

        fn volumes() -> impl Strategy<Value = BTreeMap<String, Volume>> {
            proptest::collection::vec(volume(), 0..6).prop_map(|list| by_name(&list))
        }

        fn names() -> impl Strategy<Value = BTreeSet<String>> {
            proptest::collection::btree_set((0..6usize).prop_map(|n| format!("v{n}")), 0..6)
        }

        fn invalid() -> spec::Invalid {
            spec::Invalid(vec![spec::Problem {
                origin: "volumes.yaml".into(),
                field: "volumes".into(),
                message: "cannot read the spec file".into(),
            }])
        }

        proptest! {
            #[test]
            fn never_stops_a_volume_unchanged_in_the_latest_valid_spec(
                running in volumes(), wanted in volumes(), refused in names(),
            ) {
                let loaded = Loaded::Volumes(wanted.values().cloned().collect());
                let plan = plan_reload(&running, &loaded, &refused);
                for name in &plan.stop {
                    prop_assert_ne!(wanted.get(name), running.get(name), "{} is unchanged and was stopped", name);
                    // Nor for a change that cannot start.
                    prop_assert!(!(wanted.contains_key(name) && refused.contains(name)), "{} kept", name);
                }
                // Every running volume is either stopped or kept, never both; only refused
                // or unchanged ones are kept, and no refused one is started.
                for name in running.keys() {
                    prop_assert!(plan.stop.contains(name) != plan.keep.contains(name), "{}", name);
                }
                for name in &plan.keep {
                    prop_assert!(wanted.get(name) == running.get(name) || refused.contains(name));
                }
                prop_assert!(plan.start.iter().all(|n| wanted.contains_key(n) && !refused.contains(n)));
                // What is wanted ends up running: kept, started, or refused.
                for name in wanted.keys() {
                    prop_assert!(plan.keep.contains(name) || plan.start.contains(name) || refused.contains(name));
                }
            }

            #[test]
            fn an_invalid_or_unreadable_spec_never_stops_anything(running in volumes(), refused in names()) {
                for loaded in [Loaded::Unreadable(invalid()), Loaded::Invalid(invalid())] {
                    let plan = plan_reload(&running, &loaded, &refused);
                    prop_assert!(plan.stop.is_empty(), "{:?} stopped {:?}", loaded, plan.stop);
                    prop_assert!(plan.start.is_empty());
                    prop_assert_eq!(plan.keep.len(), running.len());
                }
            }
        }
    }
}
