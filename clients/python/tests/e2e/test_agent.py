"""Backend.AI's agent lifecycle, as its code does it, against the real dockerd and the bai-s3
managed plugin: the kit's calls plus the container calls the agent makes with aiodocker."""

import os
from pathlib import Path

import aiodocker
import pytest

from bai_s3_client import (
    Backend,
    VfolderVolume,
    ensure_volume,
    mount_entry,
    mount_from_spec,
    mount_spec,
    remove_unused_volumes,
    VolumeConflict,
    write_backend,
)

BACKEND = "storage-proxy"
KERNEL_USER = "1000:1000"


@pytest.fixture(scope="module", autouse=True)
def storage_proxy_backend(env):
    """The backend the manager hands to the agent, written into the plugin's backends file."""
    d = env.default_backend()
    write_backend(
        BACKEND,
        Backend(endpoint=d["endpoint"], access_key=d["access-key"], secret_key=d["secret-key"]),
        env.backends,
    )
    assert env.default_backend() == d, "the other backend changed"
    assert (env.backends.stat().st_mode & 0o777) == 0o600


def vfolder(env, vfid, ro=False):
    return VfolderVolume(vfid, bucket=env.bucket, prefix=f"vfolders/{vfid}", uid=1000, gid=1000,
                         ro=ro, backend=BACKEND)


async def kernel(docker, env, made, name, mounts):
    """Creates and starts a kernel container the way the agent does (Mounts, Init: true)."""
    config = {
        "Image": env.image,
        "Cmd": ["sleep", "600"],
        "Labels": {env.label.split("=", 1)[0]: env.label.split("=", 1)[1]},
        "HostConfig": {"Mounts": mounts, "Init": True},
    }
    c = await docker.containers.create(config, name=name)
    made["containers"].append(c.id)
    await c.start()
    return c


async def sh(container, script, user=KERNEL_USER):
    """Exec as the kernel's user; returns (exit code, stdout, stderr)."""
    ex = await container.exec(["sh", "-c", script], user=user)
    out, err = b"", b""
    async with ex.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            if msg.stream == 1:
                out += msg.data
            else:
                err += msg.data
    code = (await ex.inspect())["ExitCode"]
    return code, out.decode(), err.decode()


async def sh_ok(container, script, user=KERNEL_USER):
    code, out, err = await sh(container, script, user)
    assert code == 0, f"{script!r} exited {code}: {out} {err}"
    return out


async def names(docker):
    return {v["Name"]: v for v in (await docker.volumes.list()).get("Volumes") or []}


def fuse_options(pid):
    """The `-o` options s3fs `pid` was started with."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"-o") + 1].decode().split(",")


def s3fs_for(bucket):
    """The plugin's live s3fs processes for `bucket` (host PID namespace)."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() != "s3fs":
                continue
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (state not in ("Z", "X") and len(argv) > 2 and argv[1] == bucket.encode()
                and any(a.startswith(b"/var/lib/bai-s3/volumes/.s3fs/") for a in argv)):
            pids.append(int(p))
    return sorted(pids)


def test_kernel_lifecycle_and_restart_from_saved_mounts(env, run):
    vfid = env.vfid()

    async def body(docker, made):
        vol = vfolder(env, vfid)
        # Kernel start: the agent lists volumes, then makes sure the vfolder's volume exists.
        before = await names(docker)
        assert vol.name not in before
        name = await ensure_volume(docker, vol, driver=env.driver)
        made["volumes"].append(name)
        listed = await names(docker)
        assert listed[name]["Driver"] in (env.driver, f"{env.driver}:latest"), listed[name]
        # A second kernel start finds it as it is; other options for the same name are refused.
        assert await ensure_volume(docker, vol, driver=env.driver) == name
        with pytest.raises(VolumeConflict) as e:
            await ensure_volume(docker, VfolderVolume(vfid, bucket=env.bucket, prefix="other",
                                                      backend=BACKEND), driver=env.driver)
        assert "prefix" in str(e.value)

        entry = mount_entry(name, "data")
        c = await kernel(docker, env, made, f"e2e-kernel-{vfid[:20]}", [entry])
        out = await sh_ok(c, "id -u; echo from-kernel > /home/work/data/hello.txt; "
                             "mkdir -p /home/work/data/d && echo deep > /home/work/data/d/x; "
                             "stat -c '%u %g' /home/work/data/hello.txt; cat /proc/1/comm")
        assert out.splitlines()[:2] == ["1000", "1000 1000"], out
        # Init: true: Docker's init is PID 1, not sleep.
        assert out.splitlines()[2] != "sleep", out
        env.expect_object(f"vfolders/{vfid}/hello.txt", "from-kernel\n")
        env.expect_object(f"vfolders/{vfid}/d/x", "deep\n")
        saved = [mount_spec(entry)]

        # Kernel termination as the agent does it; the named volume survives v=True.
        await c.stop(t=1)
        await c.delete(force=True, v=True)
        made["containers"].remove(c.id)
        assert name in await names(docker), "delete(v=True) removed the vfolder's volume"
        status = (await (await docker.volumes.get(name)).show())["Status"]
        assert status["mounted"] is False and status["holders"] == 0, status
        assert status["prefix"] == f"vfolders/{vfid}" and status["uid"] == 1000, status

        # Kernel restart: the container is made again from the saved name:target:perm only.
        mounts = [await mount_from_spec(docker, s, vol, driver=env.driver) for s in saved]
        assert mounts[0]["VolumeOptions"] == {}
        c2 = await kernel(docker, env, made, f"e2e-kernel2-{vfid[:20]}", mounts)
        assert await sh_ok(c2, "cat /home/work/data/hello.txt /home/work/data/d/x") == \
            "from-kernel\ndeep\n"
        await sh_ok(c2, "echo again >> /home/work/data/hello.txt")
        env.expect_object(f"vfolders/{vfid}/hello.txt", "from-kernel\nagain\n")
        await c2.stop(t=1)
        await c2.delete(force=True, v=True)
        made["containers"].remove(c2.id)

        # Between the agent's removal of the volume and its re-creation, someone plants a volume
        # of that name on another prefix: the restart refuses it rather than mount it.
        await (await docker.volumes.get(name)).delete()
        await docker.volumes.create({"Name": name, "Driver": env.driver, "DriverOpts": {
            **vol.driver_opts(), "prefix": "planted"}})
        with pytest.raises(VolumeConflict) as e:
            await mount_from_spec(docker, saved[0], vol, driver=env.driver)
        assert "prefix" in str(e.value) and "planted" in str(e.value), e.value
        with pytest.raises(VolumeConflict):
            await mount_from_spec(docker, saved[0], vfolder(env, env.vfid()), driver=env.driver)

    run(body)


def test_eight_kernels_share_one_vfolder_on_one_s3fs(env, run):
    vfid = env.vfid()

    async def body(docker, made):
        name = await ensure_volume(docker, vfolder(env, vfid), driver=env.driver)
        made["volumes"].append(name)
        assert s3fs_for(env.bucket) == [], "an s3fs of the bucket runs before any kernel"
        ks = []
        for i in range(8):
            ks.append(await kernel(docker, env, made, f"e2e-k{i}-{vfid[:20]}",
                                   [mount_entry(name, "shared")]))
        pids = s3fs_for(env.bucket)
        assert len(pids) == 1, f"expected one s3fs for 8 kernels, found {pids}"
        status = (await (await docker.volumes.get(name)).show())["Status"]
        assert status["holders"] == 8 and status["mounted"] is True, status
        for i, k in enumerate(ks):
            await sh_ok(k, f"echo kernel-{i} > /home/work/shared/k{i}.txt")
            env.expect_object(f"vfolders/{vfid}/k{i}.txt", f"kernel-{i}\n")
        for k in ks:
            out = await sh_ok(k, "cat /home/work/shared/k*.txt")
            assert out.splitlines() == [f"kernel-{i}" for i in range(8)], out
        assert s3fs_for(env.bucket) == pids, "the s3fs changed while kernels wrote"

        for k in ks[:7]:
            await k.stop(t=1)
            await k.delete(force=True, v=True)
            made["containers"].remove(k.id)
        status = (await (await docker.volumes.get(name)).show())["Status"]
        assert status["holders"] == 1 and status["mounted"] is True, status
        assert await sh_ok(ks[7], "cat /home/work/shared/k0.txt") == "kernel-0\n"
        await ks[7].stop(t=1)
        await ks[7].delete(force=True, v=True)
        made["containers"].remove(ks[7].id)

    run(body)


def test_read_only_twin_refuses_writes(env, run):
    vfid = env.vfid()

    async def body(docker, made):
        rw = await ensure_volume(docker, vfolder(env, vfid), driver=env.driver)
        ro = await ensure_volume(docker, vfolder(env, vfid, ro=True), driver=env.driver)
        made["volumes"] += [rw, ro]
        assert ro == rw + ".ro"
        writer = await kernel(docker, env, made, f"e2e-w-{vfid[:20]}", [mount_entry(rw, "data")])
        await sh_ok(writer, "echo shared > /home/work/data/f.txt")
        env.expect_object(f"vfolders/{vfid}/f.txt", "shared\n")
        reader = await kernel(docker, env, made, f"e2e-r-{vfid[:20]}",
                              [mount_entry(ro, "data", read_only=True)])
        assert await sh_ok(reader, "cat /home/work/data/f.txt") == "shared\n"
        for script in ["echo no > /home/work/data/new.txt", "rm /home/work/data/f.txt",
                       "mkdir /home/work/data/dir"]:
            code, out, err = await sh(reader, script)
            assert code != 0, f"{script!r} succeeded on the read-only twin"
            assert "Read-only file system" in err, err
            # root in the kernel cannot write either.
            code, out, err = await sh(reader, script, user="0:0")
            assert code != 0 and "Read-only file system" in err, (script, err)
        # The read-only twin has an s3fs of its own, mounted read-only (`-o ro`: no runtime's
        # remount of a bind makes it writable); the writable twin keeps the other one.
        pids = s3fs_for(env.bucket)
        assert len(pids) == 2, pids
        assert sorted("ro" in fuse_options(p) for p in pids) == [False, True], \
            [fuse_options(p) for p in pids]
        assert await sh_ok(writer, "ls /home/work/data") == "f.txt\n"

    run(body)


def test_remove_unused_volumes_keeps_used_and_kept_ones(env, run):
    a, b, c = env.vfid(), env.vfid(), env.vfid()

    async def body(docker, made):
        va = await ensure_volume(docker, vfolder(env, a), driver=env.driver)
        vb = await ensure_volume(docker, vfolder(env, b), driver=env.driver)
        vc = await ensure_volume(docker, vfolder(env, c), driver=env.driver)
        made["volumes"] += [va, vb, vc]
        # va is used by a stopped kernel (kept for a restart), vb is kept by name, vc is unused.
        k = await kernel(docker, env, made, f"e2e-gc-{a[:20]}", [mount_entry(va, "data")])
        await k.stop(t=1)
        removed = await remove_unused_volumes(docker, keep=[vb], driver=env.driver)
        assert vc in removed and va not in removed and vb not in removed, removed
        assert all(r.startswith("bai-s3.") for r in removed), removed
        left = await names(docker)
        assert va in left and vb in left and vc not in left
        await k.delete(force=True, v=True)
        made["containers"].remove(k.id)
        removed = await remove_unused_volumes(docker, driver=env.driver)
        assert va in removed and vb in removed, removed
        assert va not in await names(docker)

    run(body)
