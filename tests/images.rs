//! Node images end to end: the project's busybox image is built, pushed to Debian's
//! `docker-registry` on loopback, pulled into fresh content stores under each pull
//! policy (with and without basic auth), imported from OCI and docker archives,
//! unpacked with whiteouts applied, and mounted as an overlay rootfs that runs.

mod common;
mod image_support;

use std::path::Path;
use std::process::Command;

use image_support::{build_busybox, skiff_image, skiff_image_ok, Registry, RootfsGuard};
use skiff_nodeagent::image::{
    write_archive, ArchiveFormat, ArchiveImage, ImageStore, PullPolicy, RegistryCredential,
};
use tempfile::TempDir;

fn tmp(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("skiff-images-{label}-"))
        .tempdir()
        .expect("temp dir")
}

/// Builds the busybox image and pushes it to `registry` as `busybox:latest`.
fn push_busybox(dir: &Path, registry: &Registry, extra: &[&str]) -> String {
    let archive = build_busybox(dir, "busybox.tar", "localhost/busybox:latest", "oci");
    let target = format!("{}/busybox:latest", registry.host());
    let mut args = vec![
        "push",
        archive.to_str().expect("utf-8"),
        target.as_str(),
        "--insecure",
    ];
    args.extend_from_slice(extra);
    skiff_image_ok(&args);
    target
}

#[tokio::test]
async fn pulls_from_local_registry_and_serves_if_not_present_from_cache() {
    let dir = tmp("pull");
    let registry = Registry::start();
    let reference = push_busybox(dir.path(), &registry, &[]);
    let store = ImageStore::open(dir.path().join("node/images"), vec![registry.host()])
        .expect("open store");

    // Several containers of a fresh image start at once: all get the same image.
    let store = std::sync::Arc::new(store);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = std::sync::Arc::clone(&store);
            let reference = reference.clone();
            tokio::spawn(async move {
                store
                    .ensure(&reference, PullPolicy::IfNotPresent, &[])
                    .await
            })
        })
        .collect();
    let mut images = Vec::new();
    for task in tasks {
        let image = task
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("pull {reference}: {e}\nregistry log:\n{}", registry.log()));
        images.push(image);
    }
    let pulled = images[0].clone();
    assert!(images.iter().all(|i| *i == pulled), "{images:?}");
    assert_eq!(pulled.reference, reference);
    assert_eq!(pulled.config.cmd, vec!["sh".to_string()]);
    assert!(
        pulled.id.starts_with("sha256:") && pulled.id.len() == 71,
        "{pulled:?}"
    );
    assert!(
        pulled
            .repo_digest
            .starts_with(&format!("{}/busybox@sha256:", registry.host())),
        "{pulled:?}"
    );
    let listed = skiff_image_ok(&[
        "list",
        "--data-dir",
        dir.path().join("node").to_str().unwrap(),
    ]);
    assert!(listed.contains(&reference), "{listed}");

    // Without the registry, IfNotPresent and Never are served from the store ...
    drop(registry);
    let cached = store
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("IfNotPresent uses the cached image");
    assert_eq!(cached, pulled);
    let never = store
        .ensure(&reference, PullPolicy::Never, &[])
        .await
        .expect("Never uses the cached image");
    assert_eq!(never.id, pulled.id);
    // ... while Always has to reach the registry.
    let err = store
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .expect_err("Always with the registry gone fails");
    assert_eq!(err.reason(), "ErrImagePull", "{err}");
}

#[tokio::test]
async fn always_policy_follows_a_moved_tag_if_not_present_keeps_the_cache() {
    let dir = tmp("always");
    let registry = Registry::start();
    let reference = push_busybox(dir.path(), &registry, &[]);
    let store =
        ImageStore::open(dir.path().join("images"), vec![registry.host()]).expect("open store");
    let first = store
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .expect("pull");

    // Move the tag to another image.
    let files = dir.path().join("v2");
    write_file(&files.join("version"), "2");
    let layer = tar_dir(&files, dir.path());
    let v2 = dir.path().join("v2.tar");
    write_image(
        dir.path(),
        "localhost/v2:latest",
        &["cat", "/version"],
        &[layer],
        ArchiveFormat::Oci,
        &v2,
    );
    skiff_image_ok(&["push", v2.to_str().unwrap(), &reference, "--insecure"]);

    let cached = store
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("cached");
    assert_eq!(
        cached.id, first.id,
        "IfNotPresent must not re-resolve the tag"
    );
    let moved = store
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .expect("re-pull");
    assert_ne!(moved.id, first.id, "Always must follow the tag");
    assert_eq!(
        moved.config.cmd,
        vec!["cat".to_string(), "/version".to_string()]
    );
    assert_ne!(moved.repo_digest, first.repo_digest);
    // The old image stays reachable by its digest.
    let old = store
        .ensure(&first.repo_digest, PullPolicy::Never, &[])
        .await
        .expect("old image by digest");
    assert_eq!(old.id, first.id);
}

#[tokio::test]
async fn never_policy_without_the_image_is_err_image_never_pull() {
    let dir = tmp("never");
    let store = ImageStore::open(dir.path().join("images"), vec![]).expect("open store");
    let err = store
        .ensure("busybox", PullPolicy::Never, &[])
        .await
        .expect_err("nothing is in a fresh store");
    assert_eq!(err.reason(), "ErrImageNeverPull");
    assert!(
        err.to_string().contains("docker.io/library/busybox:latest"),
        "the message names the normalised image: {err}"
    );
    let err = store
        .ensure("Not A Name", PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("invalid name");
    assert_eq!(err.reason(), "InvalidImageName", "{err}");
}

#[tokio::test]
async fn missing_tag_is_err_image_pull_with_a_clear_message() {
    let dir = tmp("missing");
    let registry = Registry::start();
    push_busybox(dir.path(), &registry, &[]);
    let store =
        ImageStore::open(dir.path().join("images"), vec![registry.host()]).expect("open store");
    let missing = format!("{}/busybox:no-such-tag", registry.host());
    let err = store
        .ensure(&missing, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("the tag does not exist");
    assert_eq!(err.reason(), "ErrImagePull");
    let msg = err.to_string();
    assert!(msg.contains(&missing) && msg.contains("not found"), "{msg}");
    assert!(store.get(&missing).expect("lookup").is_none());
}

#[tokio::test]
async fn basic_auth_registry_needs_the_pull_secret() {
    let dir = tmp("auth");
    let registry = Registry::start_with_auth("skiff", "s3cret");
    // Pushing needs the credentials too.
    let archive = build_busybox(dir.path(), "busybox.tar", "localhost/busybox:latest", "oci");
    let target = format!("{}/private/busybox:1.0", registry.host());
    let denied = skiff_image(&["push", archive.to_str().unwrap(), &target, "--insecure"]);
    assert!(
        !denied.status.success(),
        "anonymous push to an auth registry succeeded"
    );
    skiff_image_ok(&[
        "push",
        archive.to_str().unwrap(),
        &target,
        "--insecure",
        "--username",
        "skiff",
        "--password",
        "s3cret",
    ]);

    let store =
        ImageStore::open(dir.path().join("images"), vec![registry.host()]).expect("open store");
    let err = store
        .ensure(&target, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("anonymous pull must be refused");
    assert_eq!(err.reason(), "ErrImagePull", "{err}");
    let wrong = RegistryCredential {
        registry: registry.host(),
        username: "skiff".into(),
        password: "wrong".into(),
    };
    let err = store
        .ensure(
            &target,
            PullPolicy::IfNotPresent,
            std::slice::from_ref(&wrong),
        )
        .await
        .expect_err("a wrong password must be refused");
    assert_eq!(err.reason(), "ErrImagePull", "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");

    let right = RegistryCredential {
        registry: format!("http://{}", registry.host()),
        username: "skiff".into(),
        password: "s3cret".into(),
    };
    // The secret for another registry is not sent; the wrong one is tried first and skipped.
    let other = RegistryCredential {
        registry: "registry.example:5000".into(),
        username: "x".into(),
        password: "y".into(),
    };
    let image = store
        .ensure(&target, PullPolicy::IfNotPresent, &[other, wrong, right])
        .await
        .unwrap_or_else(|e| panic!("pull with credentials: {e}\n{}", registry.log()));
    assert_eq!(image.config.cmd, vec!["sh".to_string()]);
}

#[tokio::test]
async fn imports_oci_and_docker_archives_under_their_names() {
    let dir = tmp("import");
    let data_dir = dir.path().join("node");
    let data = data_dir.to_str().unwrap();
    let oci = build_busybox(dir.path(), "oci.tar", "localhost/busybox:latest", "oci");
    let docker = build_busybox(dir.path(), "docker.tar", "busybox:docker", "docker");
    let out = skiff_image_ok(&["import", oci.to_str().unwrap(), "--data-dir", data]);
    assert!(out.contains("localhost/busybox:latest"), "{out}");
    let out = skiff_image_ok(&["import", docker.to_str().unwrap(), "--data-dir", data]);
    assert!(out.contains("docker.io/library/busybox:docker"), "{out}");
    let listed = skiff_image_ok(&["list", "--data-dir", data]);
    assert!(
        listed.contains("localhost/busybox:latest")
            && listed.contains("docker.io/library/busybox:docker"),
        "{listed}"
    );

    // Imported images are present for IfNotPresent/Never without any registry.
    let store = ImageStore::open(data_dir.join("images"), vec![]).expect("open store");
    let a = store
        .ensure("localhost/busybox:latest", PullPolicy::Never, &[])
        .await
        .expect("imported OCI image");
    let b = store
        .ensure("busybox:docker", PullPolicy::IfNotPresent, &[])
        .await
        .expect("imported docker image");
    // Same config in both archives: same image ID.
    assert_eq!(a.id, b.id);
    assert_eq!(b.config.cmd, vec!["sh".to_string()]);
}

#[test]
fn import_rejects_a_blob_that_does_not_match_its_digest() {
    let dir = tmp("tamper");
    let archive = build_busybox(dir.path(), "good.tar", "localhost/busybox:latest", "oci");
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    );
    // Rewrite the config blob in place: its file name (the digest) now lies.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        unpacked
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let config_path = blob(manifest["config"]["digest"].as_str().unwrap());
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("\"sh\"", "\"ls\"")).unwrap();
    let bad = dir.path().join("bad.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&bad)
            .arg("-C")
            .arg(&unpacked)
            .arg("."),
    );

    let data = dir.path().join("node");
    let out = skiff_image(&[
        "import",
        bad.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a tampered archive was imported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    let listed = skiff_image_ok(&["list", "--data-dir", data.to_str().unwrap()]);
    assert!(!listed.contains("busybox"), "nothing is tagged: {listed}");
}

#[tokio::test]
async fn whiteouts_of_an_upper_layer_hide_lower_files_in_the_rootfs() {
    let dir = tmp("whiteout");
    // Layer 1: a/keep, a/gone, b/old. Layer 2 deletes a/gone and makes b opaque.
    let l1 = dir.path().join("l1");
    let l2 = dir.path().join("l2");
    for (path, body) in [("a/keep", "keep"), ("a/gone", "gone"), ("b/old", "old")] {
        write_file(&l1.join(path), body);
    }
    for (path, body) in [("a/.wh.gone", ""), ("b/.wh..wh..opq", ""), ("b/new", "new")] {
        write_file(&l2.join(path), body);
    }
    let layers: Vec<Vec<u8>> = [&l1, &l2].iter().map(|d| tar_dir(d, dir.path())).collect();
    for format in [ArchiveFormat::Oci, ArchiveFormat::Docker] {
        let name = format!("localhost/whiteout:{format:?}").to_lowercase();
        let archive = dir.path().join(format!("whiteout-{format:?}.tar"));
        write_image(dir.path(), &name, &["sh"], &layers, format, &archive);
        let store = ImageStore::open(dir.path().join("images"), vec![]).expect("open store");
        store.import(&archive, None).expect("import");
        let image = store
            .ensure(&name, PullPolicy::Never, &[])
            .await
            .expect("imported");
        let container = dir.path().join(format!("c-{format:?}"));
        let _guard = RootfsGuard(container.clone());
        let rootfs = store.mount_rootfs(&image, &container).expect("mount");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("a/keep")).unwrap(),
            "keep"
        );
        assert!(
            !rootfs.join("a/gone").exists(),
            "{format:?}: whiteout ignored"
        );
        assert!(
            !rootfs.join("b/old").exists(),
            "{format:?}: opaque dir ignored"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("b/new")).unwrap(),
            "new"
        );
        let names: Vec<String> = std::fs::read_dir(rootfs.join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["keep".to_string()],
            "no .wh. files leak into the rootfs"
        );
        ImageStore::unmount_rootfs(&container).expect("unmount");
    }
}

#[tokio::test]
async fn overlay_rootfs_runs_busybox_and_writes_stay_in_the_container() {
    let dir = tmp("rootfs");
    let archive = build_busybox(dir.path(), "busybox.tar", "localhost/busybox:latest", "oci");
    let store = ImageStore::open(dir.path().join("images"), vec![]).expect("open store");
    store.import(&archive, None).expect("import");
    let image = store
        .ensure("localhost/busybox:latest", PullPolicy::Never, &[])
        .await
        .expect("imported image");

    let c1 = dir.path().join("c1");
    let c2 = dir.path().join("c2");
    let _g1 = RootfsGuard(c1.clone());
    let _g2 = RootfsGuard(c2.clone());
    let root1 = store.mount_rootfs(&image, &c1).expect("mount c1");
    // Mounting again (agent restart) is a no-op.
    assert_eq!(store.mount_rootfs(&image, &c1).expect("remount"), root1);
    let root2 = store.mount_rootfs(&image, &c2).expect("mount c2");
    for applet in ["sh", "httpd", "wget", "nc", "sleep", "cat", "echo", "ls"] {
        assert!(
            root1.join("bin").join(applet).exists(),
            "/bin/{applet} missing"
        );
    }
    let passwd = std::fs::read_to_string(root1.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("root:x:0:0") && passwd.contains("nobody:x:65534"),
        "{passwd}"
    );

    let hi = chroot(&root1, &["/bin/busybox", "echo", "hi"]);
    assert_eq!(hi.trim(), "hi");
    // Writes and deletes inside container 1 ...
    let page = chroot(
        &root1,
        &[
            "/bin/sh",
            "-c",
            "echo data > /tmp/f && rm /bin/cat && /bin/busybox cat /var/www/index.html",
        ],
    );
    assert!(page.contains("skiff busybox"), "{page}");
    assert!(root1.join("tmp/f").exists());
    assert!(!root1.join("bin/cat").exists());
    // ... land in its upper dir and are invisible to container 2 on the same layers.
    assert!(c1.join("upper/tmp/f").exists());
    assert!(!root2.join("tmp/f").exists());
    assert!(root2.join("bin/cat").exists());
    let listing = chroot(&root2, &["/bin/ls", "/tmp"]);
    assert_eq!(listing.trim(), "", "container 2 sees container 1's /tmp");

    ImageStore::unmount_rootfs(&c1).expect("unmount");
    assert!(!root1.exists(), "rootfs dir removed");
    assert!(!c1.join("upper").exists() && !c1.join("work").exists());
    ImageStore::unmount_rootfs(&c1).expect("unmount is idempotent");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root1.to_str().unwrap()), "still mounted");
    assert!(mounts.contains(root2.to_str().unwrap()), "c2 unaffected");
}

/// Writes an image of `layers` (uncompressed tars) with `Cmd` `cmd` as an archive.
fn write_image(
    scratch: &Path,
    name: &str,
    cmd: &[&str],
    layers: &[Vec<u8>],
    format: ArchiveFormat,
    out: &Path,
) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l, scratch)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    write_archive(
        &ArchiveImage {
            name: name.to_string(),
            config: serde_json::to_vec(&config).unwrap(),
            layers: layers.to_vec(),
        },
        format,
        out,
    )
    .expect("write archive");
}

fn chroot(root: &Path, argv: &[&str]) -> String {
    let mut cmd = Command::new("/usr/sbin/chroot");
    cmd.arg(root).args(argv).env_clear().env("PATH", "/bin");
    run_ok(&mut cmd)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_file(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// An uncompressed tar of `dir`'s contents (GNU tar, as image builders produce).
fn tar_dir(dir: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!(
        "{}.tar",
        dir.file_name().unwrap().to_string_lossy()
    ));
    run_ok(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(dir)
            .arg("."),
    );
    std::fs::read(out).unwrap()
}

fn sha256(data: &[u8], scratch: &Path) -> String {
    let file = scratch.join("sha-input");
    std::fs::write(&file, data).unwrap();
    let out = run_ok(Command::new("sha256sum").arg(&file));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}
