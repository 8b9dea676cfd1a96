"""The CLI as a user runs it, in subprocesses."""

from __future__ import annotations

import av
import httpx

from tests.acceptance.conftest import Processes


def test_cli_messages_stay_whole_in_a_narrow_terminal(processes: Processes) -> None:
    created = processes.run("keys", "create", "--name", "alice", COLUMNS="40")
    assert created.returncode == 0, created.stderr
    [said] = [line for line in created.stderr.splitlines() if line.startswith("created ")]
    assert said.endswith("(alice, unlimited); store it now, it is not shown again")
    [where] = [line for line in created.stderr.splitlines() if "database" in line]
    assert where.startswith("no database at /") and where.endswith("as the server.")

    processes.serve(name="narrow", COLUMNS="40")
    log = (processes.tmp_path / "narrow.log").read_text().splitlines()
    [url_line] = [line for line in log if line.startswith("videoserve on http://")]
    assert url_line.endswith("(docs at /docs)")


def test_keys_create_prints_the_key_last_and_list_hides_it(processes: Processes) -> None:
    created = processes.run("keys", "create", "--name", "alice")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("vs_") and len(key) > 30
    listing = processes.run("keys", "list")
    assert "alice" in listing.stdout and key not in listing.stdout
    url = processes.serve()
    ok = httpx.post(
        f"{url}/v2/sora-2-pro", json={"prompt": "x", "duration": 4}, headers={"x-api-key": key}
    )
    assert ok.status_code == 200


def test_generate_against_a_running_server_writes_a_playable_mp4(
    processes: Processes, tmp_path
) -> None:
    key = processes.run("keys", "create", "--name", "cli").stdout.strip().splitlines()[-1]
    url = processes.serve()
    out = tmp_path / "out.mp4"
    result = processes.run(
        "generate",
        "a druid in a forest",
        "--url",
        url,
        "--duration",
        "4",
        "--size",
        "720x1280",
        "-o",
        str(out),
        VIDEOSERVE_API_KEY=key,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.height > stream.codec_context.width  # portrait kept
        fps = float(stream.average_rate)  # read while open: PyAV 18.1.1 refuses it after
    assert frames / fps == 4.0


def test_generate_with_an_embedded_server(processes: Processes, tmp_path) -> None:
    out = tmp_path / "embedded.mp4"
    # A cache of its own: the model is built here, where diffusers shows its bars by default.
    result = processes.run(
        "generate",
        "a cat",
        "--duration",
        "4",
        "-o",
        str(out),
        VIDEOSERVE_MODEL_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 1000
    # As quiet as `serve`: the progress bar and the result, no library's warnings or bars.
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith(f"wrote {out} ")
    assert [line for line in lines[:-1] if "━" not in line] == [], result.stderr


def test_generate_reports_errors_in_words(processes: Processes, tmp_path) -> None:
    result = processes.run("generate", "a cat", "--duration", "5", "-o", str(tmp_path / "x.mp4"))
    assert result.returncode == 1
    assert "duration" in result.stderr


def test_serve_bootstraps_a_first_key_on_a_fresh_install(processes: Processes, tmp_path) -> None:
    processes.serve(name="fresh")
    log = (tmp_path / "fresh.log").read_text()
    key = next(
        word.split("=", 1)[1] for word in log.split() if word.startswith("VIDEOSERVE_API_KEY=")
    )
    assert key.startswith("vs_")


def test_a_configuration_mistake_is_one_line_not_a_traceback(
    processes: Processes, tmp_path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nbackend = "nope"\n')
    for command, env, message in (
        ("worker", {"VIDEOSERVE_PRELOAD": "nope"}, "VIDEOSERVE_PRELOAD: model 'nope' is not"),
        ("serve", {"VIDEOSERVE_PRELOAD": "nope"}, "VIDEOSERVE_PRELOAD: model 'nope' is not"),
        ("serve", {"VIDEOSERVE_MODELS": str(bad)}, "model 'x': unknown backend 'nope'"),
    ):
        result = processes.run(command, **env)
        assert result.returncode == 2, (command, env, result.stderr)
        assert f"configuration error: {message}" in result.stderr
        assert "Traceback" not in result.stderr and "─" not in result.stderr


def test_models_command_lists_availability(processes: Processes, tmp_path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        '[models.my-wan]\nbackend = "diffusers"\npath = "' + str(tmp_path / "missing") + '"\n'
    )
    result = processes.run("models", VIDEOSERVE_MODELS=str(models_file))
    assert result.returncode == 0, result.stderr
    assert "tiny-t2v" in result.stdout and "my-wan" in result.stdout
    assert "missing" in result.stdout


def test_generate_extend_and_edit_a_video(processes: Processes, tmp_path) -> None:
    first = tmp_path / "first.mp4"
    assert processes.run("generate", "a cat", "--duration", "4", "-o", str(first)).returncode == 0
    longer = tmp_path / "longer.mp4"
    result = processes.run(
        "generate", "the cat runs", "--extend", str(first), "--duration", "4", "-o", str(longer)
    )
    assert result.returncode == 0, result.stderr
    edited = tmp_path / "edited.mp4"
    result = processes.run(
        "generate", "the cat in snow", "--edit", str(first), "--strength", "0.4", "-o", str(edited)
    )
    assert result.returncode == 0, result.stderr
    for path, seconds in ((longer, 8.0), (edited, 4.0)):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            fps = float(stream.average_rate)  # read while open: PyAV 18.1.1 refuses it after
        assert frames / fps == seconds


def test_generate_start_timeout_fails_expired_with_no_worker(
    processes: Processes, tmp_path
) -> None:
    key = processes.run("keys", "create", "--name", "cli").stdout.strip().splitlines()[-1]
    url = processes.serve(name="api-only", VIDEOSERVE_EMBEDDED_WORKER="false")
    log = (processes.tmp_path / "api-only.log").read_text()
    assert "no worker is registered" in log  # said at start: nothing will run the jobs
    result = processes.run(
        "generate",
        "a cat",
        "--url",
        url,
        "--duration",
        "4",
        "--start-timeout",
        "0.5",
        "-o",
        str(tmp_path / "never.mp4"),
        VIDEOSERVE_API_KEY=key,
    )
    assert result.returncode == 1
    assert "start deadline" in result.stderr, result.stderr
    assert not (tmp_path / "never.mp4").exists()


def test_generate_priority_above_the_keys_bound_is_refused(processes: Processes, tmp_path) -> None:
    key = processes.run("keys", "create", "--name", "bounded").stdout.strip().splitlines()[-1]
    url = processes.serve(name="api-priority", VIDEOSERVE_EMBEDDED_WORKER="false")
    result = processes.run(
        *("generate", "a cat", "--url", url, "--duration", "4", "--priority", "high"),
        *("-o", str(tmp_path / "never.mp4")),
        VIDEOSERVE_API_KEY=key,
    )
    assert result.returncode == 1
    assert "at most 'normal'" in result.stderr, result.stderr
    bad = processes.run("generate", "a cat", "--url", url, "--priority", "urgent")
    assert bad.returncode == 2 and "urgent" in bad.stderr  # typer names the choices


def test_generate_execution_timeout_above_the_models_limit_is_refused(
    processes: Processes, tmp_path
) -> None:
    key = processes.run("keys", "create", "--name", "cli").stdout.strip().splitlines()[-1]
    url = processes.serve(
        name="limited", VIDEOSERVE_EMBEDDED_WORKER="false", VIDEOSERVE_MAX_JOB_SECONDS="60"
    )
    result = processes.run(
        "generate",
        "a cat",
        "--url",
        url,
        "--duration",
        "4",
        "--execution-timeout",
        "61",
        "-o",
        str(tmp_path / "never.mp4"),
        VIDEOSERVE_API_KEY=key,
    )
    assert result.returncode != 0
    assert "X-Execution-Timeout: at most the limit of model 'tiny-t2v', 60 s" in result.stderr
    assert not (tmp_path / "never.mp4").exists()
