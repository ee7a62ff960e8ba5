"""The ``lipsync-stream`` command: serve, render, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .audio import AudioError, load_audio
from .characters.fetch import FetchConfig, default_cache_dir
from .cpus import cpus
from .engines import DEFAULT_ENGINE, ENGINE_NAMES
from .neural import ENGINE_ERRORS
from .wire.protocol import DEFAULT_CHARACTER, FPS, SAMPLE_RATE, SessionParams
from .wire.session import DEFAULT_LEAD, DEFAULT_MAX_MESSAGE_BYTES, Limits

if TYPE_CHECKING:
    from .serve.server_config import ServerConfig

log = logging.getLogger("lipsync_stream")


def sample_speech() -> Path:
    """The bundled sample sentence (espeak-ng, 16 kHz mono FLAC)."""
    return Path(str(resources.files("lipsync_stream") / "assets" / "speech" / "hello.flac"))


def _seconds_or_none(text: str) -> float | None:
    value = float(text)
    return None if value <= 0 else value


def _add_key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("LIPSYNC_STREAM_API_KEY"), help="API key for a --server that asks for one (default: $LIPSYNC_STREAM_API_KEY)")


def default_workers(engine: str) -> int:
    """Worker processes for `serve`. A weight-free engine renders without the GIL, in one render
    thread per core: one process serves two cores as well as two processes do (bench/throughput.py),
    with one character cache. What does hold the GIL is the event loop's share (websocket framing,
    session bookkeeping: about a sixth of a frame's work), so a process per 4 cores (at most 4)
    keeps every loop from becoming the bottleneck on bigger machines. A learned engine keeps one
    process, whose one model every session shares."""
    from .engines import LEARNED_ENGINES

    return 1 if engine in LEARNED_ENGINES else max(1, min(4, cpus() // 4))


def is_loopback(host: str) -> bool:
    """Whether listening on *host* reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_NAMES, help="lip-sync engine (default: %(default)s; wav2lip needs the [neural] extra and --model)")
    p.add_argument("--model", type=Path, default=None, metavar="PATH", help="learned engines: wav2lip's checkpoint (.pth or .onnx), musetalk's model directory (as MuseTalk publishes it)")
    p.add_argument("--device", metavar="DEVICE", default="auto", help="learned engines: cpu, cuda, cuda:N, or auto (a GPU when torch sees one; default)")
    p.add_argument("--fidelity", choices=["tuned", "reference"], default="tuned", help="learned engines: tuned (default: this project's crop, paste and quiet gate) or reference (what the authors' inference code computes: wav2lip; musetalk's whole-utterance audio features, for rendering files)")
    p.add_argument("--jpeg-quality", metavar="1-100", type=int, default=85, help="JPEG quality of frames, 1-100 (default: %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR", type=Path, default=None, help=f"downloads, decoded characters and landmarks (default: $LIPSYNC_STREAM_CACHE, else {default_cache_dir()})")


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _command(sub: Any, name: str, helptext: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows what it does, and that takes --log-level after its name too."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help="how much to log (default: INFO)")
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".", parents=[common])
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``lipsync-stream`` command line: one subcommand per job."""
    parser = argparse.ArgumentParser(prog="lipsync-stream", description="Real-time lip-sync streaming server (LipsyncStream protocol).")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="how much to log (default: %(default)s); also after the command")
    parser.add_argument("--version", action="version", version=f"lipsync-stream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = _command(sub, "serve", "run the websocket server")
    s.add_argument("--host", metavar="ADDRESS", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    s.add_argument("--asset-root", type=Path, action="append", default=[], metavar="DIR", help="directory clients may name characters in (repeatable)")
    _add_server_options(s)
    s.add_argument("--max-message-bytes", metavar="BYTES", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest client message (default: %(default)s)")
    s.add_argument("--max-session-length", type=_seconds_or_none, default=3600.0, metavar="SECONDS", help="longest session; 0 = no limit (default: %(default)s)")
    s.add_argument("--max-idle-time", type=_seconds_or_none, default=300.0, metavar="SECONDS", help="longest silence from a client; 0 = no limit (default: %(default)s)")
    s.add_argument("--workers", metavar="N", type=int, default=None, help="server processes sharing the port (SO_REUSEPORT) and the character cache (default: one per 4 CPU cores, at most 4, for the weight-free engines, which render in a thread per core; 1 for learned engines, one model per process)")
    s.add_argument("--allow-private-urls", action="store_true", help="let clients name http(s) URLs on loopback, link-local and private addresses (off: SSRF guard)")
    s.add_argument("--lead", type=float, default=DEFAULT_LEAD, metavar="SECONDS", help="how far frames may run ahead of real time (default: %(default)s)")
    s.add_argument("--max-sessions", type=int, default=None, metavar="N", help="sessions at once, all workers together; more are refused with 'capacity' (default: CPU cores x the engine's sessions per core: 8 for viseme, 12 for energy)")
    s.add_argument("--max-loads", type=int, default=2, metavar="N", help="characters decoded at once per worker, on threads of their own; more wait (default: %(default)s)")
    s.add_argument("--api-keys", type=Path, default=None, metavar="FILE", help="keys file made with `lipsync-stream keys add`: every session then needs a key or a session token")
    s.add_argument("--no-auth", action="store_true", help="serve anyone who can reach the port, also on a non-loopback address")
    s.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN", help="a web origin (https://app.example.com) whose pages may open sessions, besides the server's own page (repeatable)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a Host name served besides loopback ones on a loopback address (DNS rebinding); on any other address, given: the only names served besides IP addresses (repeatable)")
    s.add_argument("--certfile", metavar="FILE", type=Path, default=None, help="TLS certificate (PEM): serve wss:// and https:// on the port")
    s.add_argument("--keyfile", metavar="FILE", type=Path, default=None, help="TLS private key (PEM), if not in --certfile")
    s.add_argument("--metrics-port", type=int, default=None, metavar="PORT", help="serve /metrics on this port of 127.0.0.1 instead of the main port")
    s.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS", help="on SIGTERM: stop taking sessions (/healthz: 503 draining) and let running ones finish this long, then close them (default: %(default)s)")

    k = _command(sub, "keys", "manage the API keys a server accepts (a file of names and key hashes)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ka = _command(ksub, "add", "make a new key, print it once, store its hash")
    ka.add_argument("name", help="a name for the key (letters, digits, _ . -), shown in logs and metrics")
    ka.add_argument("--file", type=Path, required=True, help="the keys file (created if missing)")
    ka.add_argument("--max-sessions", type=int, default=0, metavar="N", help="sessions this key may have open at once (default: no limit)")
    ka.add_argument("--max-session-seconds", type=float, default=0, metavar="SECONDS", help="longest session with this key (default: the server's limit)")
    kl = _command(ksub, "list", "the keys' names and limits")
    kl.add_argument("--file", type=Path, required=True)
    kr = _command(ksub, "remove", "remove a key: it stops working at once, also on a running server")
    kr.add_argument("name")
    kr.add_argument("--file", type=Path, required=True)

    pl = _command(sub, "play", "play a session live: OpenCV window and sound, in sync")
    src = pl.add_mutually_exclusive_group(required=True)
    src.add_argument("audio", type=Path, nargs="?", help="audio file to speak")
    src.add_argument("--mic", action="store_true", help="speak into the microphone (16 kHz mono)")
    pl.add_argument("--server", metavar="URL", default=None, help="ws:// URL of a running server (default: start one in this process)")
    pl.add_argument("--character", metavar="REF", default=DEFAULT_CHARACTER, help="video_reference_url (default: the embedded character)")
    pl.add_argument("--buffer", type=int, default=6, metavar="FRAMES", help="frames to queue before playing, like minimumChunkSize (default: %(default)s)")
    pl.add_argument("--no-sound", action="store_true", help="no sound device: keep time with a silent clock")
    pl.add_argument("--handle-silence", action="store_true", help="let the server make idle frames instead of sending silence")
    pl.add_argument("--seconds", type=float, default=None, help="stop after this long")
    pl.add_argument("--stats-json", metavar="FILE", type=Path, default=None, help="write what was measured (frames, fps, audio/video skew) here")
    _add_key_option(pl)
    _add_server_options(pl)

    pr = _command(sub, "prepare", "turn a talking-head video into a character directory")
    pr.add_argument("video", type=Path, help="any video FFmpeg reads, with one face")
    pr.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write NAME.mp4, NAME.pkl, NAME.landmarks.npz")
    pr.add_argument("--name", default=None, help="file name stem (default: the directory's name)")
    pr.add_argument("--max-seconds", metavar="SECONDS", type=float, default=30.0, help="use at most this much of the video, 30 s at most (default: %(default)s)")

    for name, helptext in [("render", "render an audio file to an MP4 through a server"), ("demo", "the default character speaking the bundled sentence, to an MP4")]:
        r = _command(sub, name, helptext)
        if name == "render":
            r.add_argument("audio", type=Path, help="wav, mp3, flac, ogg, ... (resampled to 16 kHz mono)")
            r.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="MP4 to write")
        else:
            r.add_argument("-o", "--output", type=Path, default=Path("demo.mp4"), metavar="FILE", help="MP4 to write (default: %(default)s)")
        r.add_argument("--character", metavar="REF", default=DEFAULT_CHARACTER, help="video_reference_url: URL, file:// URL or path (default: the embedded character)")
        r.add_argument("--faces", metavar="FILE", default=None, help="face_det_results: a Wav2Lip-style pickle (default: detect faces)")
        r.add_argument("--server", metavar="URL", default=None, help="ws:// URL of a running server (default: start one in this process)")
        r.add_argument("--realtime", action="store_true", help="ask for real-time pacing instead of rendering as fast as possible")
        _add_key_option(r)
        _add_server_options(r)
    return parser


@contextlib.asynccontextmanager
async def _server_url(args: argparse.Namespace, asset_roots: list[Path]) -> AsyncIterator[str]:
    if args.server:
        yield args.server
        return
    from .serve.runner import running_server

    async with running_server(_in_process_config(args, asset_roots)) as (_app, url):
        yield url


def _in_process_config(args: argparse.Namespace, asset_roots: list[Path]) -> ServerConfig:
    """The server that `render`, `demo` and `play` start when no --server is given."""
    from .serve.server_config import ServerConfig

    fetch = FetchConfig(asset_roots=asset_roots, cache_dir=args.cache_dir or default_cache_dir())
    return ServerConfig(port=0, engine=args.engine, jpeg_quality=args.jpeg_quality, asset_roots=asset_roots, fetch=fetch, model=args.model, device=args.device, fidelity=args.fidelity)


class UsageError(Exception):
    """A command-line mistake: the message names it and its fix (exit code 2)."""


def _local_reference(ref: str | None, roots: list[Path], remote: bool, option: str) -> str | None:
    """A local path for an in-process server becomes absolute, and its folder an asset root.

    The file must exist: the in-process server would otherwise speak of asset roots the user
    never set.
    """
    if ref is None or remote or ref == DEFAULT_CHARACTER or "://" in ref:
        return ref
    path = Path(ref).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{option} {ref}: no such file")
    roots.append(path.parent)
    return str(path)


def _session_references(args: argparse.Namespace, roots: list[Path]) -> tuple[str, str | None]:
    """The character and faces references of `render`/`demo`/`play`, checked."""
    faces = getattr(args, "faces", None)
    if faces is not None and args.character == DEFAULT_CHARACTER:
        raise UsageError("--faces describes the faces of a video: give that video with --character (the default character has its own)")
    character = _local_reference(args.character, roots, bool(args.server), "--character") or DEFAULT_CHARACTER
    return character, _local_reference(faces, roots, bool(args.server), "--faces")


async def _render(args: argparse.Namespace, audio_path: Path) -> int:
    from .client import ServerError
    from .client.recorder import record

    try:
        pcm = load_audio(audio_path)
        roots: list[Path] = []
        character, faces = _session_references(args, roots)
        if not args.output.resolve().parent.is_dir():
            raise UsageError(f"cannot write {args.output}: the folder {args.output.resolve().parent} does not exist")
    except (AudioError, UsageError) as exc:
        log.error("%s", exc)
        return 2
    params = SessionParams(video_reference_url=character, face_det_results=faces, realtime=args.realtime)
    log.info("rendering %s (%.2f s) on character %s", audio_path.name, len(pcm) / SAMPLE_RATE, params.video_reference_url)
    try:
        async with _server_url(args, roots) as url:
            frames = await record(url, pcm, args.output, params, progress=sys.stderr.isatty(), api_key=args.api_key if args.server else None)
    except ServerError as exc:
        log.error("server refused the session: %s", exc)
        return 1
    except (*ENGINE_ERRORS, ValueError) as exc:
        log.error("cannot start the %s engine: %s", args.engine, exc)
        return 2
    except OSError as exc:
        log.error("cannot reach the server: %s", exc)
        return 1
    log.info("wrote %s: %d frames (%.2f s) with %.2f s of audio", args.output, frames, frames / FPS, len(pcm) / SAMPLE_RATE)
    return 0


def _play(args: argparse.Namespace) -> int:
    from .client.player import Microphone, NullAudioOut, Player, PyAudioOut, write_stats
    from .serve.runner import ServerThread

    pcm = None
    if not args.mic:
        try:
            pcm = load_audio(args.audio)
        except AudioError as exc:
            log.error("%s", exc)
            return 2
    roots: list[Path] = []
    try:
        character, _ = _session_references(args, roots)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    params = SessionParams(video_reference_url=character, handle_silence=args.handle_silence)
    try:
        out = NullAudioOut() if args.no_sound else PyAudioOut()
    except (RuntimeError, OSError) as exc:
        log.error("%s (or use --no-sound)", exc)
        return 2
    with contextlib.ExitStack() as stack:
        url = args.server
        if not url:
            try:
                url = stack.enter_context(ServerThread(_in_process_config(args, roots))).url
            except (*ENGINE_ERRORS, ValueError) as exc:
                log.error("cannot start the %s engine: %s", args.engine, exc)
                return 2
        player = Player(url, params, out, args.buffer, api_key=args.api_key if args.server else None)
        player.start_network(pcm)
        if args.mic:
            assert player.feed is not None
            try:
                stack.callback(Microphone(player.feed).close)
            except (RuntimeError, OSError) as exc:
                log.error("cannot open the microphone: %s", exc)
                player.stop()
                return 2
            log.info("listening: speak into the microphone; q, Esc or Ctrl-C to stop")
        stats = player.run(args.seconds)
    summary = stats.summary()
    log.info("shown %d of %d frames at %.1f fps; audio/video skew p50 %.1f ms, p95 %.1f ms", summary["shown"], summary["received"], summary["fps"], summary["skew_ms_p50"], summary["skew_ms_p95"])
    if args.stats_json:
        write_stats(args.stats_json, stats)
    return 1 if stats.error else 0


def _prepare(args: argparse.Namespace) -> int:
    from .characters.character import CharacterError
    from .characters.faces import FaceError
    from .characters.prepare import prepare

    try:
        out = prepare(args.video, args.output, args.name, max(1, int(args.max_seconds * FPS)), progress=sys.stderr.isatty())
    except (CharacterError, FaceError) as exc:
        log.error("cannot prepare %s: %s", args.video, exc)
        return 1
    print(f"character ready: serve {args.output.resolve().parent} with --asset-root and ask for {args.output.name}/{out.video.name}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .serve.auth import KeyFileError, add_key, read_keys, remove_key

    try:
        if args.keys_command == "add":
            key = add_key(args.file, args.name, args.max_sessions, args.max_session_seconds)
            print(key)
            print(f"key '{args.name}' added to {args.file}; it is shown this once, only its hash is kept", file=sys.stderr)
        elif args.keys_command == "list":
            for k in read_keys(args.file):
                sessions = k.max_sessions or "any number of"
                seconds = f"{k.max_session_seconds:g} s at most" if k.max_session_seconds else "as long as the server allows"
                print(f"{k.name}: {sessions} sessions at once, {seconds}")
        elif not remove_key(args.file, args.name):
            log.error("%s has no key named %r", args.file, args.name)
            return 1
    except KeyFileError as exc:
        log.error("%s", exc)
        return 2
    return 0


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    """The server's configuration; ValueError says in one line why it cannot start."""
    import ssl

    from .serve.auth import KeyFileError, read_keys
    from .serve.server_config import ServerConfig

    if args.api_keys is None and not args.no_auth and not is_loopback(args.host):
        raise ValueError(f"refusing to serve {args.host} without keys: anyone who can reach it could use it; give --api-keys FILE (see `lipsync-stream keys add`) or --no-auth")
    if args.api_keys is not None:
        try:
            if not args.api_keys.is_file():
                raise KeyFileError(f"no keys file {args.api_keys}; make one with `lipsync-stream keys add NAME --file {args.api_keys}`")
            if not read_keys(args.api_keys):
                log.warning("%s holds no keys yet: no session can start until one is added", args.api_keys)
        except KeyFileError as exc:
            raise ValueError(str(exc)) from None
    if args.keyfile is not None and args.certfile is None:
        raise ValueError("--keyfile needs --certfile")
    if args.certfile is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use the TLS certificate {args.certfile}: {exc}") from None
    limits = Limits(args.max_message_bytes, args.max_session_length, args.max_idle_time, args.lead)
    config = ServerConfig(
        args.host, args.port, list(args.asset_root), args.engine, args.jpeg_quality, limits,
        max_sessions=args.max_sessions, max_loads=max(1, args.max_loads), api_keys=args.api_keys,
        allowed_origins=list(args.allowed_origin), allowed_hosts=list(args.allowed_host), certfile=args.certfile, keyfile=args.keyfile, metrics_port=args.metrics_port,
        model=args.model, device=args.device, fidelity=args.fidelity, drain_timeout=max(0.0, args.drain_timeout),
    )  # fmt: skip
    config.fetch = FetchConfig(asset_roots=list(args.asset_root), cache_dir=args.cache_dir or default_cache_dir(), allow_private_urls=args.allow_private_urls)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a usage mistake, with one line saying which)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    if args.command == "keys":
        return _keys(args)
    if args.command == "serve":
        from .serve.runner import serve_forever

        try:
            config = _serve_config(args)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        workers = default_workers(args.engine) if args.workers is None else max(1, args.workers)
        try:
            if workers > 1:
                from .serve.runner import serve_workers

                return serve_workers(config, workers, logging.getLevelName(args.log_level))
            asyncio.run(serve_forever(config))
        except (*ENGINE_ERRORS, ValueError) as exc:
            log.error("cannot start the %s engine: %s", args.engine, exc)
            return 2
        except OSError as exc:  # the address is in use, or not this machine's
            log.error("cannot listen on %s port %d: %s", args.host, args.port, exc.strerror or exc)
            return 2
        return 0
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "play":
        return _play(args)
    audio = args.audio if args.command == "render" else sample_speech()
    return asyncio.run(_render(args, audio))


if __name__ == "__main__":
    sys.exit(main())
