//! `deploy/`: every file parses, and they agree with each other and with the plugin — one socket path in
//! the configs, the EncryptionConfigurations, the static pod, the kube-apiserver patch and the systemd
//! unit; one health port in the configs and the probes; each config example passes `gm-kms-plugin check`
//! (with test keys, or against the fake JD Cloud KMS); the EncryptionConfigurations have what
//! kube-apiserver requires; the Dockerfile puts the binary where the static pod runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use gm_kms_plugin::config::{Config, KeySpec, SocketSpec};
use gm_kms_testkit::fake_jdcloud::FakeJdCloud;
use serde_json::Value;

use crate::support::plugin::{binary, copy_key, repo};

/// Every file deploy/ must hold; a new file must be added here (and checked) too.
const FILES: &[&str] = &[
    "Dockerfile",
    "config-jdcloud.json",
    "config-rotation.json",
    "config-sdf.json",
    "config-sm2.json",
    "encryption-config-v1.yaml",
    "encryption-config-v2.yaml",
    "gm-kms-plugin.service",
    "kube-apiserver-patch.yaml",
    "monitoring",
    "static-pod.yaml",
];

const CONFIGS: &[&str] = &[
    "config-sm2.json",
    "config-jdcloud.json",
    "config-rotation.json",
    "config-sdf.json",
];

/// Where the configs live on a node, as the static pod, the unit and the docs name it.
const CONFIG_PATH: &str = "/etc/k8s-kms-plugin/config.json";

fn deploy(name: &str) -> PathBuf {
    repo().join("deploy").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// A YAML value as JSON (the manifests use only maps, lists, strings, integers and booleans).
fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => Value::from(s.parse::<f64>().expect("a float")),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let k = k.as_str().expect("string keys only").to_string();
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

/// Parses a one-document YAML file of deploy/.
fn yaml(name: &str) -> Value {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(name))
        .unwrap_or_else(|e| panic!("deploy/{name}: not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "deploy/{name}: one YAML document");
    yaml_to_json(&docs[0])
}

fn json(name: &str) -> Value {
    serde_json::from_str(&read(name))
        .unwrap_or_else(|e| panic!("deploy/{name}: not valid JSON: {e}"))
}

/// A systemd unit: section → key → values (keys may repeat).
fn unit(name: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for (i, line) in read(name).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(s.to_string());
            sections.entry(s.to_string()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("deploy/{name}:{}: not KEY=VALUE: {line:?}", i + 1));
        assert!(
            !line.ends_with('\\'),
            "deploy/{name}:{}: no continuation lines",
            i + 1
        );
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("deploy/{name}:{}: outside a section", i + 1));
        sections
            .entry(section)
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    sections
}

/// `/var/run` is a symlink to `/run` on every systemd host.
fn normalize_run(p: &str) -> String {
    match p.strip_prefix("/var/run/") {
        Some(rest) => format!("/run/{rest}"),
        None => p.to_string(),
    }
}

fn socket_path(c: &Config) -> PathBuf {
    match &c.socket {
        SocketSpec::Path(p) => p.clone(),
        SocketSpec::Abstract(n) => panic!("deploy configs use a socket file, not @{n}"),
    }
}

/// The parsed configs of deploy/, as the plugin reads them (paths need not exist to parse), with each
/// `REPLACE-WITH-…` placeholder filled in as the operator does (the plugin refuses a placeholder).
fn configs() -> Vec<(&'static str, Config)> {
    CONFIGS
        .iter()
        .map(|name| {
            let text = read(name).replace(gm_kms_plugin::config::PLACEHOLDER_PREFIX, "filled-in-");
            let c = Config::parse(&text, Path::new(CONFIG_PATH))
                .unwrap_or_else(|e| panic!("deploy/{name}: {e}"));
            (*name, c)
        })
        .collect()
}

#[test]
fn placeholders_of_the_examples_are_refused_by_name() {
    for name in CONFIGS {
        let text = read(name);
        match Config::parse(&text, Path::new(CONFIG_PATH)) {
            Ok(_) => assert!(!text.contains("REPLACE-WITH-"), "deploy/{name}"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    text.contains("REPLACE-WITH-")
                        && e.contains("placeholder")
                        && e.contains("field "),
                    "deploy/{name}: {e}"
                );
            }
        }
    }
}

/// The one socket path every config names.
fn the_socket() -> PathBuf {
    let paths: BTreeSet<PathBuf> = configs().iter().map(|(_, c)| socket_path(c)).collect();
    assert_eq!(paths.len(), 1, "all configs serve one socket: {paths:?}");
    paths.into_iter().next().unwrap()
}

fn the_health_addr() -> SocketAddr {
    let addrs: BTreeSet<Option<SocketAddr>> =
        configs().iter().map(|(_, c)| c.health_addr).collect();
    assert_eq!(addrs.len(), 1, "all configs use one HealthAddr: {addrs:?}");
    addrs
        .into_iter()
        .next()
        .unwrap()
        .expect("the health listener is on in the examples")
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// The `hostPath.path` of the pod volume a container mounts at `mount_path`, and whether it is read only.
fn host_path_mounted_at(pod: &Value, container: &Value, mount_path: &str) -> (String, bool) {
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let m = mounts
        .iter()
        .find(|m| m["mountPath"] == mount_path)
        .unwrap_or_else(|| panic!("no volumeMount at {mount_path}: {mounts:?}"));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap_or_else(|| panic!("no volume named {}", m["name"]));
    let host = str_of(&volume["hostPath"]["path"], "hostPath.path").to_string();
    (host, m["readOnly"] == true)
}

#[test]
fn deploy_holds_exactly_the_documented_files_and_each_parses() {
    let found: BTreeSet<String> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, want,
        "deploy/ files (update FILES and the checks when adding one)"
    );
    for f in FILES {
        if f.ends_with(".yaml") {
            assert!(yaml(f).is_object(), "deploy/{f}: a mapping");
        } else if f.ends_with(".json") {
            assert!(json(f).is_object(), "deploy/{f}: an object");
        } else if f.ends_with(".service") {
            assert!(unit(f).contains_key("Service"));
        } else if *f == "monitoring" {
            // Alerting rules and dashboard: tests/it/monitoring.rs loads and checks them.
            let found: BTreeSet<String> = std::fs::read_dir(deploy(f))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(
                found,
                BTreeSet::from([
                    "gm-kms-plugin-alerts.yaml".to_string(),
                    "gm-kms-plugin-dashboard.json".to_string()
                ])
            );
        } else {
            assert_eq!(*f, "Dockerfile");
        }
    }
}

#[test]
fn configs_agree_on_socket_health_address_and_key_locations() {
    let socket = the_socket();
    assert_eq!(socket, Path::new("/var/run/k8s-kms-plugin/kms-plugin.sock"));
    assert_eq!(the_health_addr(), "127.0.0.1:8787".parse().unwrap());
    let config_dir = Path::new(CONFIG_PATH).parent().unwrap();
    for (name, c) in configs() {
        for key in c.keys() {
            if let KeySpec::Sm2(s) = key {
                assert!(
                    s.private_key_file.starts_with(config_dir),
                    "deploy/{name}: key {} is outside the mounted {}",
                    s.private_key_file.display(),
                    config_dir.display()
                );
            }
            if let KeySpec::Sdf(s) = key {
                let pin = s
                    .pin_file
                    .as_deref()
                    .expect("the sdf example has a PIN file");
                assert!(
                    pin.starts_with(config_dir),
                    "deploy/{name}: SdfPinFile {} is outside the mounted {}",
                    pin.display(),
                    config_dir.display()
                );
            }
        }
    }
    // The rotation example: an SM2 primary and the previous SM2 key, decrypt-only.
    let (_, rotation) = configs()
        .into_iter()
        .find(|(n, _)| *n == "config-rotation.json")
        .unwrap();
    assert!(matches!(rotation.primary, KeySpec::Sm2(_)));
    assert_eq!(rotation.previous.len(), 1);
    assert!(matches!(rotation.previous[0], KeySpec::Sm2(_)));
    // The JD Cloud example is JD Cloud's own plugin file: exactly its fields.
    let jd = json("config-jdcloud.json");
    let fields: BTreeSet<&str> = jd.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "AccessKey",
            "SecretKey",
            "KmsEndpoint",
            "KmsKeyId",
            "KmsSchema",
            "GRPCSocketPath"
        ])
    );
}

#[test]
fn encryption_configurations_have_what_kube_apiserver_requires() {
    let endpoint = format!("unix://{}", the_socket().display());
    for (file, version) in [
        ("encryption-config-v1.yaml", "v1"),
        ("encryption-config-v2.yaml", "v2"),
    ] {
        let c = yaml(file);
        assert_eq!(c["kind"], "EncryptionConfiguration", "{file}");
        assert_eq!(c["apiVersion"], "apiserver.config.k8s.io/v1", "{file}");
        let resources = c["resources"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: resources"));
        assert!(!resources.is_empty(), "{file}: resources");
        let mut kms_names = BTreeSet::new();
        for r in resources {
            let kinds = r["resources"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: resources[].resources"));
            assert!(
                kinds.iter().any(|k| k == "secrets"),
                "{file}: secrets are encrypted"
            );
            let providers = r["providers"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: providers"));
            assert!(!providers.is_empty(), "{file}: providers");
            for p in providers {
                let keys: Vec<&String> = p.as_object().expect("a provider object").keys().collect();
                assert_eq!(
                    keys.len(),
                    1,
                    "{file}: one provider kind per entry: {keys:?}"
                );
            }
            // The plugin writes: it comes first. identity last reads what was stored before encryption.
            let kms = &providers[0]["kms"];
            assert!(kms.is_object(), "{file}: the first provider is kms");
            assert!(
                providers.last().unwrap().get("identity").is_some(),
                "{file}: identity last"
            );
            let name = str_of(&kms["name"], "kms.name");
            assert!(
                !name.is_empty() && !name.contains(':'),
                "{file}: kms.name {name:?} (it goes into the storage prefix)"
            );
            assert!(
                kms_names.insert(name.to_string()),
                "{file}: kms names are unique"
            );
            assert_eq!(
                kms["endpoint"],
                endpoint.as_str(),
                "{file}: endpoint is the plugin's socket"
            );
            let timeout = str_of(&kms["timeout"], "kms.timeout");
            assert!(
                timeout.ends_with('s') && timeout[..timeout.len() - 1].parse::<u32>().is_ok(),
                "{file}: timeout {timeout}"
            );
            match version {
                "v2" => {
                    assert_eq!(kms["apiVersion"], "v2", "{file}");
                    assert!(
                        kms.get("cachesize").is_none(),
                        "{file}: kube-apiserver refuses cachesize with v2"
                    );
                }
                _ => {
                    assert!(
                        kms.get("apiVersion").is_none() || kms["apiVersion"] == "v1",
                        "{file}"
                    );
                    assert!(
                        kms["cachesize"].as_i64().is_some_and(|n| n > 0),
                        "{file}: cachesize"
                    );
                }
            }
        }
    }
    // The two files can be combined while migrating v1 → v2: their kms names differ (kube-apiserver
    // requires unique names once a v2 provider is present).
    let name = |f: &str| yaml(f)["resources"][0]["providers"][0]["kms"]["name"].clone();
    assert_ne!(
        name("encryption-config-v1.yaml"),
        name("encryption-config-v2.yaml")
    );
}

#[test]
fn static_pod_and_apiserver_patch_mount_the_socket_directory_and_probe_the_health_port() {
    let socket = the_socket();
    let socket_dir = socket.parent().unwrap().to_str().unwrap().to_string();
    let health = the_health_addr();

    let pod = yaml("static-pod.yaml");
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "kube-system");
    assert_eq!(
        pod["spec"]["hostNetwork"], true,
        "probes on 127.0.0.1 reach the host's listener"
    );
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(!str_of(&c["image"], "image").is_empty());
    assert_eq!(c["command"], serde_json::json!(["/gm-kms-plugin"]));
    assert_eq!(c["args"], serde_json::json!(["-f", CONFIG_PATH]));
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/healthz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], path, "{probe}");
        assert_eq!(g["port"], health.port(), "{probe} port = HealthAddr port");
        assert_eq!(
            g["host"],
            health.ip().to_string(),
            "{probe} host = HealthAddr host"
        );
    }
    let (host, ro) = host_path_mounted_at(&pod, c, &socket_dir);
    assert_eq!(host, socket_dir, "the socket directory is the host's");
    assert!(!ro, "the plugin creates the socket: read-write");
    let config_dir = Path::new(CONFIG_PATH).parent().unwrap().to_str().unwrap();
    let (host, ro) = host_path_mounted_at(&pod, c, config_dir);
    assert_eq!(host, config_dir);
    assert!(ro, "config and keys are mounted read only");

    let api = yaml("kube-apiserver-patch.yaml");
    let c = api["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kube-apiserver")
        .expect("the kube-apiserver container");
    let flag = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--encryption-provider-config="))
        .expect("--encryption-provider-config flag");
    let enc_dir = Path::new(flag).parent().unwrap().to_str().unwrap();
    let (host, ro) = host_path_mounted_at(&api, c, enc_dir);
    assert_eq!(host, enc_dir);
    assert!(ro);
    let (host, _) = host_path_mounted_at(&api, c, &socket_dir);
    assert_eq!(
        host, socket_dir,
        "kube-apiserver sees the plugin's socket at the endpoint's path"
    );
}

#[test]
fn systemd_unit_restarts_reloads_is_hardened_and_starts_before_kubelet() {
    let u = unit("gm-kms-plugin.service");
    let one = |section: &str, key: &str| -> String {
        let v = u
            .get(section)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("[{section}] {key}"));
        assert_eq!(v.len(), 1, "[{section}] {key} once");
        v[0].clone()
    };
    assert!(
        one("Unit", "Before")
            .split_whitespace()
            .any(|s| s == "kubelet.service")
    );
    assert_eq!(
        one("Service", "ExecStart"),
        format!("/usr/local/bin/gm-kms-plugin -f {CONFIG_PATH}")
    );
    let reload = one("Service", "ExecReload");
    assert!(reload.ends_with("kill -HUP $MAINPID"), "{reload}");
    assert_eq!(one("Service", "Restart"), "always");
    assert_eq!(one("Service", "NoNewPrivileges"), "yes");
    assert_eq!(one("Service", "ProtectSystem"), "strict");
    assert_eq!(one("Service", "CapabilityBoundingSet"), "");
    let socket_dir = normalize_run(the_socket().parent().unwrap().to_str().unwrap());
    let writable: Vec<String> = one("Service", "ReadWritePaths")
        .split_whitespace()
        .map(normalize_run)
        .collect();
    assert!(
        writable.contains(&socket_dir),
        "ReadWritePaths {writable:?} lacks {socket_dir}"
    );
    assert_eq!(
        format!("/run/{}", one("Service", "RuntimeDirectory")),
        socket_dir
    );
    assert_eq!(
        one("Service", "RuntimeDirectoryPreserve"),
        "yes",
        "kube-apiserver's bind mount survives restarts"
    );
    assert!(u["Install"].contains_key("WantedBy"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_the_binary_where_the_pod_runs_it() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage build");
    let first = lines[stages[0]];
    let builder = first
        .rsplit_once(" AS ")
        .map(|(_, n)| n.trim())
        .expect("the builder stage is named");
    assert!(
        first.contains("rust:"),
        "the builder is a Rust image: {first}"
    );
    let last = &lines[*stages.last().unwrap()..];
    assert!(
        last.iter()
            .any(|l| l.starts_with(&format!("COPY --from={builder} "))
                && l.ends_with(" /gm-kms-plugin")),
        "the runtime stage copies the binary to /gm-kms-plugin"
    );
    assert!(last.contains(&r#"ENTRYPOINT ["/gm-kms-plugin"]"#));
    assert!(last.contains(&format!(r#"CMD ["-f", "{CONFIG_PATH}"]"#).as_str()));
    let user = last
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "non-root by default: {user}");
    // Every path the builder copies from the build context exists in the repository.
    for l in &lines[stages[0]..*stages.last().unwrap()] {
        if let Some(args) = l.strip_prefix("COPY ") {
            let parts: Vec<&str> = args
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    repo().join(src).exists(),
                    "Dockerfile copies {src}, which the repository lacks"
                );
            }
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "a locked release build"
    );
}

/// Runs `gm-kms-plugin check -f config`; panics with its output if it fails.
fn check(config: &Path) -> String {
    let out = Command::new(binary())
        .arg("check")
        .arg("-f")
        .arg(config)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "check -f {} failed:\n{stdout}\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn sm2_config_examples_pass_check_with_test_keys() {
    let dev_keys = ["dev-sm2-key.pem", "dev-sm2-key-previous.pem"];
    for name in ["config-sm2.json", "config-rotation.json"] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = json(name);
        // Each key path of the example becomes a copy of a development key, in the example's order.
        let mut n = 0;
        let mut replace = |entry: &mut Value| {
            let original = str_of(&entry["Sm2PrivateKeyFile"], "Sm2PrivateKeyFile").to_string();
            assert!(
                original.starts_with("/etc/k8s-kms-plugin/keys/"),
                "{name}: {original}"
            );
            entry["Sm2PrivateKeyFile"] =
                Value::from(copy_key(dir.path(), dev_keys[n]).to_str().unwrap());
            n += 1;
        };
        replace(&mut config);
        if let Some(previous) = config.get_mut("PreviousKeys").and_then(Value::as_array_mut) {
            previous.iter_mut().for_each(&mut replace);
        }
        config["GRPCSocketPath"] = Value::from(dir.path().join("kms.sock").to_str().unwrap());
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let out = check(&path);
        assert!(out.contains("seal/open round trip: ok"), "{name}:\n{out}");
        assert_eq!(
            out.matches("(previous, sm2)").count(),
            n - 1,
            "{name}:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdcloud_config_example_passes_check_against_the_fake() {
    let fake = FakeJdCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = json("config-jdcloud.json");
    config["AccessKey"] = Value::from(fake.access_key());
    config["SecretKey"] = Value::from(fake.secret_key());
    config["KmsEndpoint"] = Value::from(fake.endpoint());
    config["KmsKeyId"] = Value::from(fake.key_id());
    // The fake speaks plain HTTP; the example's https is checked by parsing it above.
    assert_eq!(config["KmsSchema"], "https");
    config["KmsSchema"] = Value::from("http");
    config["GRPCSocketPath"] = Value::from(dir.path().join("kms.sock").to_str().unwrap());
    let path = dir.path().join("config.json");
    crate::support::plugin::write_private(&path, config.to_string());
    let out = tokio::task::block_in_place(|| check(&path));
    assert!(
        out.contains(&format!("key jdcloud-{} (primary, jdcloud)", fake.key_id())),
        "{out}"
    );
    assert!(out.contains("seal/open round trip: ok"), "{out}");
}

#[test]
fn sdf_config_example_passes_check_against_the_soft_device() {
    use crate::support::sdf::{self, SoftDevice};
    let dev = SoftDevice::new("gmt0018-2012");
    let dir = tempfile::tempdir().unwrap();
    let mut config = json("config-sdf.json");
    assert_eq!(
        str_of(&config["SdfPinFile"], "SdfPinFile"),
        "/etc/k8s-kms-plugin/keys/sdf-pin"
    );
    assert!(Path::new(str_of(&config["SdfLibrary"], "SdfLibrary")).is_absolute());
    config["SdfLibrary"] = Value::from(sdf::library().to_str().unwrap());
    let pin = sdf::secret_file(dir.path(), "sdf-pin", &format!("{}\n", sdf::PIN));
    config["SdfPinFile"] = Value::from(pin.to_str().unwrap());
    config["GRPCSocketPath"] = Value::from(dir.path().join("kms.sock").to_str().unwrap());
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let (ok, out) = sdf::check(&path, &dev);
    assert!(ok, "{out}");
    assert!(out.contains("(primary, sdf)"), "{out}");
    assert!(out.contains("seal/open round trip: ok"), "{out}");
}

/// Every absolute node path that README.md, keys/README.md or docs/ tells the operator to use is where
/// deploy/ makes it reachable: the plugin's files under the directory the static pod mounts (and the systemd
/// unit may read), the socket in the shared socket directory, kube-apiserver's files under what its patch
/// mounts, or one of a few node paths named below with what uses them. A key put anywhere else would not be
/// there for the plugin. And `keygen` runs once, on a trusted machine (operations.md, section 1), so no doc
/// runs it with a master's path.
#[test]
fn every_node_path_in_the_docs_is_where_deploy_makes_it_reachable() {
    let pod = yaml("static-pod.yaml");
    let c = &pod["spec"]["containers"][0];
    let config_dir = Path::new(CONFIG_PATH).parent().unwrap().to_str().unwrap();
    let (config_host, _) = host_path_mounted_at(&pod, c, config_dir);
    let socket = the_socket();
    let socket_dir = socket.parent().unwrap().to_str().unwrap();
    let (socket_host, _) = host_path_mounted_at(&pod, c, socket_dir);
    let api = yaml("kube-apiserver-patch.yaml");
    let apiserver = api["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kube-apiserver")
        .unwrap();
    let flag = apiserver["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--encryption-provider-config="))
        .unwrap();
    let enc_dir = Path::new(flag).parent().unwrap().to_str().unwrap();
    let (enc_host, _) = host_path_mounted_at(&api, apiserver, enc_dir);
    // The SDF library's mount is in the static pod, commented out until a cipher machine is used.
    assert!(
        read("static-pod.yaml").contains("#   mountPath: /opt/sdf"),
        "the static pod's sdf mount"
    );
    let u = unit("gm-kms-plugin.service");
    assert!(
        u["Service"]["ReadOnlyPaths"]
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == config_host)),
        "the systemd unit may read {config_host}"
    );
    let exec = u["Service"]["ExecStart"][0].clone();
    let bin_dir = Path::new(exec.split_whitespace().next().unwrap())
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let reachable: Vec<(String, &str)> = vec![
        (
            config_host.clone(),
            "config and keys: the static pod's read-only mount, the unit's ReadOnlyPaths",
        ),
        (
            socket_host.clone(),
            "the socket directory, shared by the static pod and kube-apiserver",
        ),
        (normalize_run(&socket_host), "the same, as systemd names it"),
        (
            enc_host.clone(),
            "the EncryptionConfiguration: kube-apiserver-patch.yaml mounts it",
        ),
        (
            "/opt/sdf".into(),
            "the vendor SDF library: the static pod's sdf mount",
        ),
        (
            "/var/log/sdf".into(),
            "the vendor SDF library's own logs (docs/hsm.md, systemd)",
        ),
        (
            "/etc/kubernetes/manifests".into(),
            "kubelet's static pods (kubeadm)",
        ),
        (
            "/etc/kubernetes/pki".into(),
            "kubeadm's etcd client certificates, for etcdctl on a master",
        ),
        (
            "/etc/systemd/system".into(),
            "where the systemd unit is installed",
        ),
        (bin_dir, "where the systemd unit runs the binary from"),
        ("/etc/ssl/certs".into(), "the system's CA store"),
    ];
    let mut docs = vec!["README.md".to_string(), "keys/README.md".to_string()];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        if n.ends_with(".md") {
            docs.push(format!("docs/{n}"));
        }
    }
    let path_char = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let at = format!("{doc}:{}", n + 1);
            for (i, _) in line.match_indices('/') {
                if line[..i].chars().next_back().is_some_and(path_char) {
                    continue;
                }
                let rest = &line[i..];
                let end = rest.find(|c: char| !path_char(c)).unwrap_or(rest.len());
                let p = rest[..end].trim_end_matches(['.', '-']);
                let top = p.split('/').nth(1).unwrap_or_default();
                if !["etc", "var", "run", "opt", "usr", "srv", "home", "root"].contains(&top)
                    || p.split('/').count() < 3
                {
                    continue;
                }
                checked += 1;
                let ok = reachable
                    .iter()
                    .any(|(r, _)| Path::new(p).starts_with(r) || Path::new(r).starts_with(p));
                if !ok {
                    bad.push(format!("{at}: {p}"));
                }
            }
            if let Some(i) = line.find("keygen --out ") {
                let dir = line[i + "keygen --out ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default();
                if dir.starts_with('/') {
                    bad.push(format!(
                        "{at}: keygen --out {dir}: make the key once on a trusted machine (a relative \
                         directory) and copy it to the masters, as docs/operations.md section 1 does"
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} paths found in the docs");
    assert!(
        bad.is_empty(),
        "paths in the docs that deploy/ does not make reachable (reachable: {reachable:#?}):\n{}",
        bad.join("\n")
    );
}
