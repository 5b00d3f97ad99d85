//! JSON Patch (RFC 6902) from one JSON value to another: what the admission
//! response carries, computed by diffing the pod before and after injection
//! so that the webhook and `sidemount inject` share one mutation.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// One patch operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Operation {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
}

/// The operations that turn `from` into `to`. Objects are compared key by key;
/// a list that changed length is replaced whole: injection inserts containers
/// in the middle of lists, where index-wise adds would only be harder to read.
/// `to` is consumed: what the patch carries is moved out of it, not copied.
pub fn diff(from: &Value, to: Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    walk(from, to, &mut String::new(), &mut ops);
    ops
}

fn walk(from: &Value, to: Value, path: &mut String, ops: &mut Vec<Operation>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            // Injection keeps a pod's keys in their order and adds its own after
            // them (or, for `initContainers`, among them): keys are matched by
            // position while both objects agree, and looked up only after that.
            let kept_in_order = a.len() <= b.len() && a.keys().zip(b.keys()).all(|(k, l)| k == l);
            if !kept_in_order {
                for key in a.keys().filter(|k| !b.contains_key(*k)) {
                    ops.push(Operation::Remove { path: child(path, key) });
                }
            }
            let mut olds = a.iter();
            let mut in_order = true;
            for (key, value) in b {
                let old = match olds.next() {
                    Some((k, old)) if in_order && *k == key => Some(old),
                    // Every key of `from` was matched, and a key appears once.
                    None if in_order => None,
                    _ => {
                        in_order = false;
                        a.get(&key)
                    }
                };
                match old {
                    None => ops.push(Operation::Add { path: child(path, &key), value }),
                    // Most of a pod is left as it was: compared, not walked.
                    Some(old) if same(old, &value) => {}
                    Some(old) => {
                        let len = path.len();
                        push_token(path, &key);
                        walk(old, value, path, ops);
                        path.truncate(len);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                if same(old, &new) {
                    continue;
                }
                let len = path.len();
                write!(path, "/{i}").expect("writing to a String");
                walk(old, new, path, ops);
                path.truncate(len);
            }
        }
        (from, to) if *from == to => {}
        (_, to) => ops.push(Operation::Replace { path: path.clone(), value: to }),
    }
}

/// `a == b`, without looking keys up while both objects list them in the same
/// order, as a pod and its injected copy almost everywhere do.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return false;
            }
            for ((k, v), (l, w)) in x.iter().zip(y) {
                if k != l {
                    // Another order: compared key by key.
                    return a == b;
                }
                if !same(v, w) {
                    return false;
                }
            }
            true
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        _ => a == b,
    }
}

fn child(path: &str, key: &str) -> String {
    let mut path = path.to_string();
    push_token(&mut path, key);
    path
}

/// Appends one reference token, escaped as RFC 6901 says: `~` is `~0`, `/` is
/// `~1` (annotation keys such as `sidemount.io/injected` carry a slash).
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_objects_key_by_key_and_escapes_tokens() {
        let from = json!({ "metadata": { "annotations": { "a/b": "1", "gone": "x" } }, "spec": { "n": 1 } });
        let to = json!({ "metadata": { "annotations": { "a/b": "1", "c~d/e": "2" } }, "spec": { "n": 2 } });
        let ops = serde_json::to_value(diff(&from, to)).unwrap();
        assert_eq!(
            ops,
            json!([
                { "op": "remove", "path": "/metadata/annotations/gone" },
                { "op": "add", "path": "/metadata/annotations/c~0d~1e", "value": "2" },
                { "op": "replace", "path": "/spec/n", "value": 2 },
            ])
        );
    }

    #[test]
    fn keys_added_among_kept_ones_are_found_in_order_or_not() {
        let from = json!({ "a": 1, "b": 1, "c": 1 });
        let ops = |to: Value| serde_json::to_value(diff(&from, to)).unwrap();
        assert_eq!(
            ops(json!({ "a": 1, "i": 0, "b": 2, "c": 1, "d": 3 })),
            json!([
                { "op": "add", "path": "/i", "value": 0 },
                { "op": "replace", "path": "/b", "value": 2 },
                { "op": "add", "path": "/d", "value": 3 },
            ])
        );
        assert_eq!(
            ops(json!({ "a": 2, "b": 1 })),
            json!([{ "op": "remove", "path": "/c" }, { "op": "replace", "path": "/a", "value": 2 }])
        );
        assert_eq!(
            ops(json!({ "c": 2, "a": 1, "b": 1, "x": 0 })),
            json!([{ "op": "replace", "path": "/c", "value": 2 }, { "op": "add", "path": "/x", "value": 0 }])
        );
    }

    #[test]
    fn compares_objects_whatever_the_order_of_their_keys() {
        let a = json!({ "x": [1, { "p": 1, "q": 2 }], "y": "s" });
        assert!(same(&a, &json!({ "x": [1, { "p": 1, "q": 2 }], "y": "s" })));
        assert!(same(&a, &json!({ "y": "s", "x": [1, { "q": 2, "p": 1 }] })));
        assert!(!same(&a, &json!({ "x": [1, { "p": 1, "q": 3 }], "y": "s" })));
        assert!(!same(&a, &json!({ "y": "s", "x": [1, { "q": 2, "r": 1 }] })));
        assert!(!same(&a, &json!({ "x": [1, { "p": 1, "q": 2 }] })));
        assert!(!same(&json!([1, 2]), &json!([1, 2, 3])));
        // A reordered object is no change.
        assert!(diff(&a, json!({ "y": "s", "x": [1, { "q": 2, "p": 1 }] })).is_empty());
    }

    #[test]
    fn replaces_lists_that_changed_length() {
        let from = json!({ "l": [1, { "x": 1 }], "m": [1, 2] });
        let to = json!({ "l": [1, { "x": 2 }], "m": [0, 1, 2] });
        assert_eq!(
            diff(&from, to),
            [
                Operation::Replace { path: "/l/1/x".into(), value: json!(2) },
                Operation::Replace { path: "/m".into(), value: json!([0, 1, 2]) },
            ]
        );
        assert!(diff(&from, from.clone()).is_empty());
        assert_eq!(diff(&json!(1), json!("x")), [Operation::Replace { path: String::new(), value: json!("x") }]);
    }
}
