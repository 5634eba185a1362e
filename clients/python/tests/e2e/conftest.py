"""Environment of the end-to-end tests: a real dockerd with the bai-s3 managed plugin enabled
against a real SeaweedFS. `cargo test --test e2e_deploy -- python_client` sets it up (plugin
built from this tree, busybox image, bucket) and runs these tests with BAI_S3_E2E_* set; run
without it they SKIP, or fail under CI=true."""

import asyncio
import json
import os
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

VARS = ["DRIVER", "IMAGE", "BACKENDS", "BUCKET", "LABEL", "EXPECT"]


@dataclass
class Env:
    driver: str
    image: str
    backends: Path
    bucket: str
    label: str
    expect: Path

    def default_backend(self) -> dict:
        """The harness's SeaweedFS as the plugin's `default` backend (keys stay out of argv and
        the environment: they are read from the backends file, as the plugin does)."""
        return tomllib.loads(self.backends.read_text())["backends"]["default"]

    def vfid(self) -> str:
        """A vfolder id of this run (the harness removes `bai-s3.e2e*` volumes left over)."""
        return "e2e" + uuid.uuid4().hex

    def expect_object(self, key: str, content: str) -> None:
        """Records an object the harness must then find in the bucket (checked with S3)."""
        with open(self.expect, "a") as f:
            f.write(json.dumps({"key": key, "content": content}) + "\n")


@pytest.fixture(scope="session")
def env() -> Env:
    missing = [v for v in VARS if not os.environ.get(f"BAI_S3_E2E_{v}")]
    if missing:
        why = ("not started by the Rust harness (cargo test --test e2e_deploy -- python_client); "
               f"missing BAI_S3_E2E_{', BAI_S3_E2E_'.join(missing)}")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    g = lambda v: os.environ[f"BAI_S3_E2E_{v}"]  # noqa: E731
    return Env(g("DRIVER"), g("IMAGE"), Path(g("BACKENDS")), g("BUCKET"), g("LABEL"),
               Path(g("EXPECT")))


@pytest.fixture
def run():
    """Runs one coroutine function with a fresh aiodocker client; removes the containers and
    volumes it registers in `made` afterwards, whatever happened."""

    def runner(fn):
        async def main():
            docker = aiodocker.Docker()
            made = {"containers": [], "volumes": []}
            try:
                return await fn(docker, made)
            finally:
                for c in made["containers"]:
                    try:
                        await docker.containers.container(c).delete(force=True)
                    except aiodocker.DockerError:
                        pass
                for v in made["volumes"]:
                    try:
                        await aiodocker.volumes.DockerVolume(docker, v).delete()
                    except aiodocker.DockerError:
                        pass
                await docker.close()

        return asyncio.run(main())

    return runner
