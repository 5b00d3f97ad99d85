//! The spec as a whole: text in, volumes or every problem out.

use super::*;

fn load_one(text: &str) -> Result<Vec<Volume>, Invalid> {
    load(&[SpecText { origin: "spec.yaml".into(), text: text.into() }])
}

fn fields(text: &str) -> Vec<String> {
    load_one(text).unwrap_err().0.into_iter().map(|p| p.field).collect()
}

#[test]
fn parses_every_type_of_the_design() {
    let vols = load_one(
        r#"
volumes:
- name: data
  type: fuse
  command: [rclone, mount, ":memory:", "{mountpoint}"]
  options: [ro, noatime]
  env: {RCLONE_VERBOSE: "1"}
  secretDir: /etc/sidemount/secrets/data
- name: ofs
  type: objectivefs
  filesystem: s3://my-bucket
  options: [mt]
- name: tank
  type: zfs
  dataset: tank/k8s/tank
  create: {refquota: 10G, refreservation: 10G, atime: false, recordsize: 131072}
- name: disk
  type: block
  device: /dev/disk/by-id/xyz
  fsType: ext4
  format: true
"#,
    )
    .unwrap();
    assert_eq!(vols.len(), 4);
    assert_eq!(
        vols[0].source,
        Source::Fuse { command: vec!["rclone".into(), "mount".into(), ":memory:".into(), "{mountpoint}".into()] }
    );
    assert_eq!(vols[0].options, vec!["ro", "noatime"]);
    assert_eq!(vols[1].source, Source::ObjectiveFs { filesystem: "s3://my-bucket".into() });
    let Source::Zfs { create: Some(props), .. } = &vols[2].source else { panic!() };
    assert_eq!(props["refquota"], "10G");
    assert_eq!(props["atime"], "off");
    assert_eq!(props["recordsize"], "131072");
    assert_eq!(
        vols[3].source,
        Source::Block { device: "/dev/disk/by-id/xyz".into(), fs_type: "ext4".into(), format: true }
    );
}

#[test]
fn accepts_a_bare_list_and_json() {
    assert_eq!(load_one("- {name: a, type: zfs, dataset: p/a}").unwrap().len(), 1);
    assert_eq!(load_one(r#"{"volumes":[{"name":"a","type":"zfs","dataset":"p/a"}]}"#).unwrap().len(), 1);
    assert!(load_one("").unwrap().is_empty());
    assert!(load_one("volumes: []").unwrap().is_empty());
}

#[test]
fn names_each_missing_required_field() {
    assert_eq!(fields("- {name: a, type: fuse}"), ["volumes[0].command"]);
    assert_eq!(fields("- {name: a, type: objectivefs}"), ["volumes[0].filesystem"]);
    assert_eq!(fields("- {name: a, type: zfs}"), ["volumes[0].dataset"]);
    assert_eq!(fields("- {name: a, type: block}"), ["volumes[0].device", "volumes[0].fsType"]);
    assert_eq!(fields("- {type: zfs, dataset: p/a}"), ["volumes[0].name"]);
    assert_eq!(fields("- {name: a}"), ["volumes[0].type"]);
}

#[test]
fn refuses_bad_values_naming_the_field() {
    assert_eq!(fields("- {name: Data, type: zfs, dataset: p/a}"), ["volumes[0].name"]);
    assert_eq!(fields("- {name: a-, type: zfs, dataset: p/a}"), ["volumes[0].name"]);
    assert_eq!(fields("- {name: a, type: nfs}"), ["volumes[0].type"]);
    assert_eq!(fields("- {name: a, type: fuse, command: [bindfs, /src, /dst]}"), ["volumes[0].command"]);
    assert_eq!(fields("- {name: a, type: fuse, command: []}"), ["volumes[0].command"]);
    assert_eq!(fields("- {name: a, type: block, device: /dev/x, fsType: ntfs}"), ["volumes[0].fsType"]);
    assert_eq!(fields("- {name: a, type: block, device: dev/x, fsType: xfs}"), ["volumes[0].device"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: /tank/a}"), ["volumes[0].dataset"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, device: /dev/x}"), ["volumes[0].device"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, options: ['a,b']}"), ["volumes[0].options[0]"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, env: {1X: y}}"), ["volumes[0].env.1X"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, secretDir: rel}"), ["volumes[0].secretDir"]);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, secretName: Bad_Name}"), ["volumes[0].secretName"]);
}

#[test]
fn reads_the_apps_uid_and_gid() {
    let vols =
        load_one("- {name: a, type: fuse, command: [x, '{mountpoint}', '{uid}'], uid: 1000, gid: 2000}").unwrap();
    assert_eq!((vols[0].uid, vols[0].gid), (Some(1000), Some(2000)));
    assert_eq!((load_one("- {name: a, type: zfs, dataset: p/a}").unwrap()[0].uid), None);
    assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, uid: 4294967295}"), ["volumes[0].uid"]);
    assert!(load_one("- {name: a, type: zfs, dataset: p/a, gid: -1}").is_err());
    assert!(load_one("- {name: a, type: zfs, dataset: p/a, uid: '1000'}").is_err());
}

#[test]
fn refuses_duplicates_across_sources() {
    let err = load(&[
        SpecText { origin: "a.yaml".into(), text: "- {name: x, type: zfs, dataset: p/a}".into() },
        SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: "- {name: x, type: zfs, dataset: p/b}".into() },
    ])
    .unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].origin, "SIDEMOUNT_VOLUMES");
    assert_eq!(err.0[0].field, "volumes[0].name");
    assert!(err.0[0].message.contains("a.yaml"));
}

#[test]
fn reports_parse_errors_and_unknown_fields() {
    let err = load_one("volumes:\n- name: a\n  type: block\n  fstype: ext4\n").unwrap_err();
    assert_eq!(err.0[0].field, "volumes[0].fstype", "{err}");
    assert!(err.0[0].message.contains("did you mean `fsType`"), "{err}");
    assert!(load_one("volumes: [").is_err());
}

/// One problem line per text: (field, message).
fn problem(text: &str) -> (String, String) {
    let err = load_one(text).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    (err.0[0].field.clone(), err.0[0].message.clone())
}

#[test]
fn unknown_keys_are_refused_at_every_level() {
    for (text, field) in [
        ("volume:\n- {name: a, type: zfs, dataset: p/a}\n", "volume"),
        ("Volumes:\n- {name: a, type: zfs, dataset: p/a}\n", "Volumes"),
        ("volumes: []\nextra: 1\n", "extra"),
        ("{}", "volumes"),
        ("- {name: a, type: zfs, dataset: p/a, Dataset: p/b}", "volumes[0].Dataset"),
        ("- {name: a, type: fuse, command: [x, '{mountpoint}'], comand: [y]}", "volumes[0].comand"),
    ] {
        let (got, message) = problem(text);
        assert_eq!(got, field, "{text:?}: {message}");
    }
    assert!(problem("volume: []").1.contains("did you mean `volumes`"));
    assert!(problem("{}").1.contains("`volumes: []` for none"));
    assert!(problem("- {name: a, type: fuse, comand: [y]}").1.contains("did you mean `command`"));
    // An empty key is named too (found by fuzzing: `&olumes:` anchors an empty key).
    assert_eq!(problem("&olumes:\n- name: data\n").0, "\"\"");
    assert_eq!(problem("- {name: a, type: zfs, dataset: p/a, '': x}").0, "volumes[0].\"\"");
    // A document with nothing in it is still no volume at all.
    assert!(load_one("# no volumes yet\n").unwrap().is_empty());
    assert!(load_one("volumes:\n").unwrap().is_empty());
}

#[test]
fn a_value_of_the_wrong_kind_names_its_field_and_what_it_must_be() {
    for (text, field, says) in [
        (
            "- {name: 123, type: zfs, dataset: p/a}",
            "volumes[0].name",
            "must be a string, not the number 123: quote it (\"123\")",
        ),
        (
            "- {name: a, type: zfs, dataset: p/a, env: {DEBUG: 1}}",
            "volumes[0].env.DEBUG",
            "must be a string, not the number 1: quote it",
        ),
        ("- {name: a, type: zfs, dataset: p/a, env: {DEBUG: true}}", "volumes[0].env.DEBUG", "not the boolean true"),
        ("- {name: a, type: fuse, command: [x, 1, '{mountpoint}']}", "volumes[0].command[1]", "must be a string"),
        ("- {name: a, type: fuse, command: 'x {mountpoint}'}", "volumes[0].command", "must be a list of strings"),
        ("- {name: a, type: zfs, dataset: p/a, options: ro}", "volumes[0].options", "must be a list of strings"),
        (
            "- {name: a, type: block, device: /dev/x, fsType: ext4, format: 'true'}",
            "volumes[0].format",
            "remove the quotes",
        ),
        ("- {name: a, type: zfs, dataset: p/a, create: {refquota: 1.5}}", "volumes[0].create.refquota", "whole number"),
        ("- {name: a, type: zfs, dataset: p/a, env: [A]}", "volumes[0].env", "must be a map"),
        ("- data", "volumes[0]", "must be a map of fields"),
        ("volumes: {name: a}", "volumes", "must be a list of volumes"),
        ("just text", "volumes", "not a string"),
    ] {
        let (got, message) = problem(text);
        assert_eq!(got, field, "{text:?}: {message}");
        assert!(message.contains(says), "{text:?}: {message}");
    }
    // Every problem of the shape at once.
    let err = load_one("- {name: 1, type: 2}\n- {name: b, type: zfs, dataset: 3}").unwrap_err();
    let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["volumes[0].name", "volumes[0].type", "volumes[1].dataset"], "{err}");
    // Quoted, the same values are fine.
    assert_eq!(load_one("- {name: '123', type: zfs, dataset: p/a, env: {DEBUG: '1'}}").unwrap()[0].name, "123");
}

#[test]
fn refuses_a_text_past_the_limits_naming_them() {
    let too_big = format!("volumes: []\n#{}\n", "x".repeat(MAX_SPEC_BYTES));
    let (field, message) = problem(&too_big);
    assert_eq!(field, "volumes");
    assert!(message.contains(&format!("above the limit of {MAX_SPEC_BYTES} bytes")), "{message}");

    let deep = format!("volumes: {}{}", "[".repeat(MAX_SPEC_DEPTH), "]".repeat(MAX_SPEC_DEPTH));
    let message = problem(&deep).1;
    assert!(message.contains(&format!("more than {MAX_SPEC_DEPTH} levels deep")), "{message}");
    let block: String = (0..=MAX_SPEC_DEPTH).map(|i| format!("{}-\n", " ".repeat(i))).collect();
    assert!(problem(&block).1.contains("levels deep"));

    let brackets = format!("- {{name: a, type: zfs, dataset: p/a, env: {{A: '{}'}}}}", "[".repeat(MAX_SPEC_BRACKETS));
    assert!(problem(&brackets).1.contains(&format!("more than {MAX_SPEC_BRACKETS} `[` and `{{`")));

    // Right at the limits, a spec is read.
    let mut at_limit = String::from("volumes:\n");
    let mut i = 0;
    while at_limit.len() < MAX_SPEC_BYTES - 200 {
        at_limit.push_str(&format!("- name: v{i}\n  type: zfs\n  dataset: pool/v{i}\n"));
        i += 1;
    }
    assert!(at_limit.len() <= MAX_SPEC_BYTES);
    assert_eq!(load_one(&at_limit).unwrap().len(), i);
}

#[test]
fn an_alias_bomb_is_refused_quickly_and_says_so() {
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    bomb.push_str("volumes: *a8\n");
    // The message shows the budget was hit; the time bound catches an expansion of
    // the 9^9 values before it (minutes), with room for a loaded machine.
    let started = crate::sys::ThreadCpuTime::now();
    let (field, message) = problem(&bomb);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(field, "volumes");
    assert!(
        message.contains(&format!("aliases (*name) that expand to more than {MAX_SPEC_VALUES} values")),
        "{message}"
    );
    // One list aliased thousands of times expands past the budget without many jumps.
    let wide = format!(
        "- {{name: a, type: fuse, command: &c [{}, '{{mountpoint}}']}}\n{}",
        vec!["x"; 2000].join(","),
        (0..1200).map(|i| format!("- name: v{i}\n  type: fuse\n  command: *c\n")).collect::<String>()
    );
    assert!(wide.len() < MAX_SPEC_BYTES);
    let started = crate::sys::ThreadCpuTime::now();
    let message = problem(&wide).1;
    assert!(message.contains("aliases"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    // An alias or two in a real spec is read.
    let shared =
        "- {name: a, type: zfs, dataset: p/a, env: &env {A: b}}\n- {name: b, type: zfs, dataset: p/b, env: *env}";
    assert_eq!(load_one(shared).unwrap()[1].env["A"], "b");
}

#[test]
fn worst_case_parse_time_at_the_limits() {
    // The costliest texts within the limits: nested as deep as allowed, every
    // bracket used, filled with the tokens libyaml pays for at each level.
    let fill = |head: String, unit: &str, tail: &str| {
        let mut text = head;
        while text.len() + unit.len() + tail.len() <= MAX_SPEC_BYTES {
            text.push_str(unit);
        }
        text + tail
    };
    let depth = MAX_SPEC_DEPTH - 2;
    let cases = [
        fill(format!("volumes: {}", "[".repeat(depth)), "a,", &"]".repeat(depth)),
        fill(format!("volumes: {}", "[".repeat(depth)), "a, ", ""),
        fill(format!("volumes: {}", "{a: ".repeat(depth)), "a: b, ", &"}".repeat(depth)),
        fill(format!("volumes: {}", "[".repeat(depth)), "[a], ", &"]".repeat(depth)),
        fill(format!("volumes:\n- {{name: a, env: &e {{{}", ""), "a: b, ", "}}\n"),
    ];
    for text in cases {
        assert!(text.len() <= MAX_SPEC_BYTES);
        let started = crate::sys::ThreadCpuTime::now();
        let _ = load_one(&text);
        // A debug build is about ten times slower than a release build.
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}: {}", started.elapsed(), &text[..40]);
    }
}
