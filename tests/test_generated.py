"""The committed generated gRPC code matches tm/proto/taskmaster.proto (`just proto`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_proto_code_is_fresh(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "tm/proto"),
         f"--python_betterproto2_out={tmp_path}",
         "--python_betterproto2_opt=client_generation=async,server_generation=async",
         str(REPO / "tm/proto/taskmaster.proto")],
        check=True, env=env, capture_output=True, timeout=120,
    )
    fresh, committed = _files(tmp_path), _files(REPO / "tm/proto/gen")
    assert sorted(fresh) == sorted(committed), "generated file set differs: run `just proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code in tm/proto/gen: {stale}; run `just proto`"


def test_generated_messages_round_trip() -> None:
    from tm.proto.gen.taskmaster import v1 as pb

    message = pb.PushRequest(coordinator_id="c", tasks=[
        pb.Task(task_id="t", command="echo hi", attempt=2, scheduled_at_us=1_700_000_000_000_001,
                timeout_s=1.5)])
    decoded = pb.PushRequest.parse(bytes(message))
    assert decoded.tasks[0].attempt == 2
    assert decoded.tasks[0].scheduled_at_us == 1_700_000_000_000_001
    assert decoded.tasks[0].timeout_s == 1.5
    update = pb.TaskUpdate.parse(bytes(pb.TaskUpdate(task_id="t", attempt=1,
                                                     kind=pb.UpdateKind.COMPLETED, exit_code=0)))
    assert update.exit_code == 0  # proto3 optional: 0 is present, not unset
    assert pb.TaskUpdate.parse(bytes(pb.TaskUpdate(task_id="t"))).exit_code is None
