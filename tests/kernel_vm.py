"""pytest plugin: run the tests marked ``kernel`` inside one virtme-ng VM per pytest run.

The host kernel may lack WireGuard (CI's does). Then the host boots a Debian kernel (which
ships ``wireguard.ko``) under QEMU with virtme-ng, once, with the host's filesystem visible
read-only, and runs ``pytest -m kernel <the selected node ids>`` inside it. The kernel tests
are ordered last and the VM boots in the background when the unit tests start, so the two
overlap. The guest side of this plugin serializes every test report into a shared writable
directory; the host replays those reports for the same node ids, so the VM's passes, failures
(with their tracebacks) and skips appear in the host's own run, summary and junit XML.

- No VM possible (opt-out, no vng/qemu/busybox/kernel, boot failure): kernel tests SKIP with the
  reason. Once the VM's pytest has started, a test it did not report FAILS: never a silent pass.
- Host kernel already has WireGuard: kernel tests run natively, no VM.

Environment variables:
  WGCABLE_SKIP_VM=1       skip the kernel tests instead of booting a VM
  WGCABLE_FORCE_VM=1      use the VM even when the host kernel has WireGuard
  WGCABLE_VM_KERNEL=PATH  kernel image to boot (default: newest /boot/vmlinuz-* with wireguard.ko)
  WGCABLE_VM_TIMEOUT=S    limit for the whole VM run, boot included (default 1500)
  WGCABLE_VM_MEMORY=SIZE  guest memory (default 1G)
  WGCABLE_VM_KVM=1        use KVM (off by default: KVM fails on the CI CPU, TCG is the safe path)
  WGCABLE_VM_KEEP=1       keep the VM's work directory (logs, junit XML) even after a clean run
  WGCABLE_VM_9P_CACHE=0   don't serve the Python trees from the caching 9p mount (debugging)
  WGCABLE_IN_VM=1         set by the host inside the guest; selects the guest side of the plugin
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

import slowness

MARKER = "kernel"
ENV_IN_VM = "WGCABLE_IN_VM"
ENV_VM_REPORT = "WGCABLE_VM_REPORT"
ENV_SKIP_VM = "WGCABLE_SKIP_VM"
ENV_FORCE_VM = "WGCABLE_FORCE_VM"
ENV_VM_KERNEL = "WGCABLE_VM_KERNEL"
ENV_VM_TIMEOUT = "WGCABLE_VM_TIMEOUT"
ENV_VM_MEMORY = "WGCABLE_VM_MEMORY"
ENV_VM_KVM = "WGCABLE_VM_KVM"
ENV_VM_KEEP = "WGCABLE_VM_KEEP"
ENV_VM_9P_CACHE = "WGCABLE_VM_9P_CACHE"

SLOWNESS_FILE = "slowness.json"

CACHED_TAG = "wgcable-host"
CACHED_MOUNT = "/run/wgcable-host"
CACHED_9P_OPTIONS = "ro,trans=virtio,version=9p2000.L,msize=524288,cache=loose"

# Measured on the 2-core CI machine under TCG (bench/vm_boot.sh): boot to first command
# 9-13 s; guest pytest for the 3 smoke tests 18-30 s, of which ~10 s is Python and pytest
# start-up over 9p and 1-6 s per netns/wireguard test; shutdown < 0.5 s. The driver's
# end-to-end tests take 20-40 s each under emulation (multi-namespace set-ups, many
# processes), so the whole tier is several minutes; 1500 s caps a hung VM well inside
# CI's 90 minutes.
DEFAULT_TIMEOUT_S = 1500.0
DEFAULT_MEMORY = "1G"
LOG_TAIL_LINES = 6

When = Literal["setup", "call", "teardown"]


def _is_kernel(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def _run_order(item: pytest.Item) -> int:
    """0: the tiers with real deadlines (netns, kubernetes); 1: unit; 2: kernel, last."""
    if _is_kernel(item):
        return 2
    if any(item.get_closest_marker(m) is not None for m in ("netns", "kubernetes")):
        return 0
    return 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    if _env_flag(ENV_IN_VM):
        config.pluginmanager.register(GuestSide(config), "wgcable-kernel-vm-guest")
    else:
        config.pluginmanager.register(HostSide(config), "wgcable-kernel-vm-host")


# ---------------------------------------------------------------------------------------------
# Guest side: inside the VM.


class GuestSide:
    """Selects only kernel tests and streams every report to the shared directory as JSON."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        target = os.environ.get(ENV_VM_REPORT)
        # Line-buffered append: reports already written survive a guest crash mid-run.
        self.out = open(target, "a", buffering=1, encoding="utf-8") if target else None  # noqa: SIM115
        # Before any test: the factor that stretches their deadlines (tests/slowness.py).
        t0 = time.monotonic()
        self.slowness = slowness.measure_against_host()
        if target and self.slowness is not None:
            Path(target).with_name(SLOWNESS_FILE).write_text(json.dumps({
                "factor": self.slowness, "measured_in_s": time.monotonic() - t0,
                "host_workload_s": float(os.environ[slowness.ENV_HOST_WORKLOAD]),
            }))

    def pytest_report_header(self) -> str:
        return f"slowness factor against the host: {self.slowness}"

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        deselected = [item for item in items if not _is_kernel(item)]
        if deselected:
            items[:] = [item for item in items if _is_kernel(item)]
            config.hook.pytest_deselected(items=deselected)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.out is None:
            return
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.out.write(json.dumps(data, default=str) + "\n")

    def pytest_unconfigure(self) -> None:
        if self.out is not None:
            self.out.close()


# ---------------------------------------------------------------------------------------------
# Host side.


def host_has_wireguard() -> bool:
    """True when this kernel has WireGuard loaded, or can load it (dry run: loads nothing)."""
    if Path("/sys/module/wireguard").is_dir():
        return True
    modprobe = shutil.which("modprobe") or shutil.which("modprobe", path="/sbin:/usr/sbin")
    if modprobe is None:
        return False
    probe = subprocess.run(
        [modprobe, "-n", "wireguard"], capture_output=True, timeout=10, check=False
    )
    return probe.returncode == 0


def _version_key(text: str) -> list[tuple[int, int | str]]:
    # Natural order, so 6.10 sorts after 6.9.
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def find_vm_kernel() -> tuple[Path | None, str]:
    """The kernel image to boot, or None with the reason why there is none."""
    chosen = os.environ.get(ENV_VM_KERNEL)
    if chosen:
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.R_OK)):
            return None, f"{ENV_VM_KERNEL}={chosen} is not a readable file"
        return path, ""
    images = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not images:
        return None, "no /boot/vmlinuz-* (run scripts/install-vm.sh)"
    for image in reversed(images):
        version = image.name.removeprefix("vmlinuz-")
        module_dir = Path("/lib/modules", version, "kernel/drivers/net/wireguard")
        if any(module_dir.glob("wireguard.ko*")) and os.access(image, os.R_OK):
            return image, ""
    return None, "no readable /boot/vmlinuz-* with a matching wireguard.ko under /lib/modules"


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    # One line for the skip reason: squeeze console padding and carriage returns.
    kept = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(empty log)"


@dataclass
class VmRun:
    """What one VM run produced."""

    workdir: Path
    kernel: Path
    skip_reason: str | None = None  # set when the guest's pytest never started
    problem: str = ""  # why reports may be missing (exit code, timeout, log tail)
    boot_s: float | None = None
    guest_s: float | None = None
    total_s: float = 0.0
    guest_rc: int | None = None
    reports: dict[str, dict[str, pytest.TestReport]] = field(default_factory=dict)


class HostSide:
    """Boots the VM once and replays its reports at the kernel tests.

    The kernel tests run last, and the VM boots in the background when the unit tests
    begin: the emulated VM and the unit tests (pure Python, no deadlines on the network)
    share the two cores, and the whole run is shorter by most of the unit tier. The VM
    does not overlap the netns and kubernetes tiers, whose tests have real deadlines.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.native: bool | None = None  # decided when the VM would start
        self.skip_reason: str | None = None
        self.run: VmRun | None = None
        self.cached_fs = os.environ.get(ENV_VM_9P_CACHE, "1") != "0"
        self.host_workload_s = 0.0
        self._nodeids: list[str] = []
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()  # the session ended before the kernel tests

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Stable: within a tier, the order (and so the module fixtures' reuse) is unchanged.
        items.sort(key=_run_order)
        self._nodeids = [i.nodeid for i in items if _is_kernel(i)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        if self.native is None and self._nodeids and _run_order(item) > 0:
            self.native = host_has_wireguard() and not _env_flag(ENV_FORCE_VM)
            if not self.native:
                self._start_in_background()
        if not _is_kernel(item):
            return None
        if self.native:
            return None  # the host kernel can do it: run the test normally
        self._wait_for_vm()
        self._replay(item)
        # Tear down what the next item does not need, as the normal protocol would: when a
        # module's last item is replayed, its module-scoped state (and the collector) must
        # not stay set up, or the next module's first item fails its setup.
        item.session._setupstate.teardown_exact(nextitem)
        return True

    # -- booting ----------------------------------------------------------------------------

    def _unavailable(self) -> tuple[list[str], Path | None, str]:
        """The vng command prefix and kernel, or the reason the VM cannot start."""
        if _env_flag(ENV_SKIP_VM):
            return [], None, f"{ENV_SKIP_VM}={os.environ[ENV_SKIP_VM]} set: kernel VM disabled"
        venv_vng = Path(sys.executable).parent / "vng"
        vng = str(venv_vng) if venv_vng.exists() else shutil.which("vng")
        if vng is None:
            return [], None, "vng not installed (run scripts/install-vm.sh)"
        if shutil.which("qemu-system-x86_64") is None:
            return [], None, "qemu-system-x86_64 not installed (run scripts/install-vm.sh)"
        if not any(shutil.which(b) for b in ("busybox-static", "busybox.static", "busybox")):
            return [], None, "busybox not installed (run scripts/install-vm.sh)"
        kernel, why = find_vm_kernel()
        if kernel is None:
            return [], None, why
        return [vng], kernel, ""

    def _start_in_background(self) -> None:
        vng, kernel, reason = self._unavailable()
        if kernel is None:
            self.skip_reason = reason
            return
        nodeids = list(self._nodeids)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"\nkernel VM: booting {kernel.name} for {len(nodeids)} test(s) in the "
                "background (slow: TCG); their results come at the end"
            )
        # Timed here, before the unit tests load the host: the guest times the same workload
        # and scales its deadlines by the ratio, so contention only lengthens them.
        self.host_workload_s = slowness.workload_seconds()

        def boot() -> None:
            try:
                self.run = self._boot_and_test(vng, kernel, nodeids)
            except Exception as exc:  # reported as the kernel tests' skip reason, not lost
                self.run = None
                self.skip_reason = f"VM run failed: {type(exc).__name__}: {exc}"

        self._thread = threading.Thread(target=boot, name="kernel-vm", daemon=True)
        self._thread.start()

    def _wait_for_vm(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self.run is not None:
                self.skip_reason = self.run.skip_reason

    def _guest_script(self, shared: Path, nodeids: list[str]) -> str:
        rootdir = str(self.config.rootpath)
        args = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", MARKER,
            "--rootdir", rootdir, f"--junitxml={shared / 'junit.xml'}",
        ]  # fmt: skip
        if self.config.inipath is not None:
            args += ["-c", str(self.config.inipath)]
        # The guest loads the same third-party plugins as the host, but named with -p and with
        # autoload off (env below): autoload makes pytest assertion-rewrite every module of each
        # plugin's distribution (all of hypothesis), which on the read-only guest filesystem
        # cannot be cached and costs ~30 s of emulated CPU per run.
        for _plugin, dist in self.config.pluginmanager.list_plugin_distinfo():
            for ep in dist.entry_points:
                if ep.group == "pytest11" and self.config.pluginmanager.has_plugin(ep.name):
                    args += ["-p", ep.name]
        verbose = int(self.config.getoption("verbose", 0) or 0)
        if verbose > 0:
            args.append("-" + "v" * verbose)  # same assertion-diff detail as the host asked for
        count = int(self.config.getoption("count", 1) or 1)
        if count > 1:  # pytest-repeat: the node ids below carry the repetition, so must it
            args.append(f"--count={count}")
        tbstyle = self.config.getoption("tbstyle", "auto")
        if tbstyle != "auto":
            args.append(f"--tb={tbstyle}")
        args += ["--", *nodeids]
        venv_bin = str(Path(sys.executable).parent)
        # A short PATH: every miss is a 9p lookup, ~10 ms each under emulation.
        path = f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        q = shlex.quote
        cache_lines: list[str] = []
        if self.cached_fs:
            # Serve the Python trees from a second, caching 9p mount (see _boot_and_test).
            # Best effort: if it fails, the uncached root filesystem still has everything.
            mnt = CACHED_MOUNT
            binds = [f"mount --bind {q(mnt + d)} {q(d)} || true" for d in self._cached_dirs(shared)]
            cache_lines = [
                f"mkdir -p {mnt} && mount -t 9p -o {CACHED_9P_OPTIONS} {CACHED_TAG} {mnt} && {{",
                *binds,
                "}",
            ]
        # Runs in the guest. The host's filesystem is read-only there except `shared`; the
        # guest's /tmp is a throwaway overlay, so tmp_path works. Node ids go in this file, not
        # on the kernel command line that carries --exec (limited to 2 KiB).
        return "\n".join([
            "#!/bin/sh",
            f": > {q(str(shared / 'started'))}",
            *cache_lines,
            f"cd {q(rootdir)} || exit 97",
            f"export {ENV_IN_VM}=1 {ENV_VM_REPORT}={q(str(shared / 'reports.jsonl'))}",
            f"export {slowness.ENV_HOST_WORKLOAD}={self.host_workload_s:.4f}",
            f"export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONDONTWRITEBYTECODE=1 PATH={q(path)}",
            # The project tree is read-only in the guest: hypothesis keeps its examples in /tmp.
            "export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/wgcable-hypothesis",
            f"{shlex.join(args)} > {q(str(shared / 'pytest.log'))} 2>&1 < /dev/null",
            f"echo $? > {q(str(shared / 'rc'))}",
            "",
        ])  # fmt: skip

    def _cached_dirs(self, shared: Path) -> list[str]:
        """The project and Python trees, outermost only, never one that holds `shared`."""
        wanted = {os.path.realpath(p) for p in (self.config.rootpath, sys.prefix, sys.base_prefix)}
        dirs: list[str] = []
        for d in sorted(wanted):  # parents sort before their children
            if d == "/" or any(d.startswith(o + "/") for o in dirs):
                continue
            if str(shared).startswith(d + "/"):
                continue  # a bind over it would hide the writable shared directory
            dirs.append(d)
        return dirs

    def _boot_and_test(self, vng: list[str], kernel: Path, nodeids: list[str]) -> VmRun:
        workdir = Path(tempfile.mkdtemp(prefix="wgcable-vm-"))
        shared = workdir / "shared"  # the only host directory the guest can write
        shared.mkdir()
        script = shared / "run.sh"
        script.write_text(self._guest_script(shared, nodeids))
        run = VmRun(workdir=workdir, kernel=kernel)
        try:
            timeout = float(os.environ.get(ENV_VM_TIMEOUT) or DEFAULT_TIMEOUT_S)
        except ValueError:
            timeout = DEFAULT_TIMEOUT_S
        cmd = [
            *vng, "--run", str(kernel), "--force-9p",  # 9p: no virtiofsd needed
            "--memory", os.environ.get(ENV_VM_MEMORY) or DEFAULT_MEMORY,
            "--rwdir", str(shared), "--cwd", str(self.config.rootpath),
            # --verbose puts the guest console (kernel log and, when udev is absent and
            # virtme falls back to it, the script's output) in vng.log for boot diagnostics.
            "--verbose", "--exec", f"sh {shlex.quote(str(script))}",
        ]  # fmt: skip
        if self.cached_fs:
            # virtme's root 9p mount caches nothing, and under emulation each stat or open is a
            # ~10 ms round trip: Python start-up alone is thousands of them. A second export of
            # the same (read-only) host tree, mounted with cache=loose in the guest, answers
            # repeated lookups from the guest's own cache.
            cmd.append(  # one `=` argument: argparse takes a bare "-fsdev ..." for an option
                "--qemu-opts=-fsdev local,id=wgcablefs,path=/,security_model=none,readonly=on,"
                f"multidevs=remap -device virtio-9p-pci,fsdev=wgcablefs,mount_tag={CACHED_TAG}"
            )
        if not _env_flag(ENV_VM_KVM):
            cmd.insert(len(vng), "--disable-kvm")
        env = dict(os.environ)
        # vng runs virtme-run and friends by name: they live next to it in the venv.
        env["PATH"] = f"{Path(vng[0]).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env.pop(ENV_IN_VM, None)
        log_path = workdir / "vng.log"
        started_flag = shared / "started"
        t0 = time.monotonic()
        timed_out = False
        rc: int | None = None
        with open(log_path, "wb") as log:
            try:
                # Own session: on timeout the whole vng/qemu group is ended by its id.
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                run.skip_reason = f"VM boot failed: cannot run vng: {exc}"
                return run
            try:
                while rc is None:
                    try:
                        rc = proc.wait(timeout=0.25)
                    except subprocess.TimeoutExpired:
                        if run.boot_s is None and started_flag.exists():
                            run.boot_s = time.monotonic() - t0
                        if time.monotonic() - t0 > timeout:
                            timed_out = True
                            break
                        if self._cancel.is_set():
                            break  # the killpg below ends qemu
            finally:
                if rc is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        run.total_s = time.monotonic() - t0
        if run.boot_s is None and started_flag.exists():
            run.boot_s = run.total_s  # started and ended within one poll
        if run.boot_s is not None:
            run.guest_s = run.total_s - run.boot_s

        if not started_flag.exists():
            what = f"timed out after {timeout:.0f} s" if timed_out else f"vng exit code {rc}"
            run.skip_reason = f"VM boot failed ({what}): {_tail(log_path)}"
            return run
        run.reports = self._load_reports(shared / "reports.jsonl")
        try:
            run.guest_rc = int((shared / "rc").read_text().strip())
        except (OSError, ValueError):
            run.guest_rc = None
        if timed_out:
            run.problem = f"VM run timed out after {timeout:.0f} s ({ENV_VM_TIMEOUT})"
        elif run.guest_rc is None:
            run.problem = f"guest pytest did not finish (vng exit code {rc})"
        else:
            run.problem = f"guest pytest exit code {run.guest_rc}"
        run.problem += f"; guest pytest log: {_tail(shared / 'pytest.log')}"
        return run

    def _load_reports(self, path: Path) -> dict[str, dict[str, pytest.TestReport]]:
        reports: dict[str, dict[str, pytest.TestReport]] = {}
        if not path.exists():
            return reports
        for line in path.read_text(errors="replace").splitlines():
            try:
                data: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a guest crash
            # JSON turned tuples into lists; pytest's terminal and junit code expect tuples.
            if isinstance(data.get("location"), list):
                data["location"] = tuple(data["location"])
            if isinstance(data.get("longrepr"), list):
                data["longrepr"] = tuple(data["longrepr"])
            rep = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
            if isinstance(rep, pytest.TestReport):
                reports.setdefault(rep.nodeid, {})[rep.when or "call"] = rep
        return reports

    # -- reporting --------------------------------------------------------------------------

    def _replay(self, item: pytest.Item) -> None:
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._reports_for(item):
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _reports_for(self, item: pytest.Item) -> list[pytest.TestReport]:
        if self.skip_reason is not None or self.run is None:
            path, line, _ = item.reportinfo()
            reason = self.skip_reason or "kernel VM did not run"
            longrepr = (os.fspath(path), (line or 0) + 1, f"Skipped: {reason}")
            return [_synthetic(item, "setup", "skipped", longrepr), _synthetic(item, "teardown")]
        got = self.run.reports.get(item.nodeid, {})
        missing = f"not reported by the kernel VM: {self.run.problem}"
        out: list[pytest.TestReport] = []
        setup = got.get("setup") or _synthetic(item, "setup")
        out.append(setup)
        synthetic_call = False
        if setup.passed:
            call = got.get("call")
            if call is None:
                call = _synthetic(item, "call", "failed", missing)
                synthetic_call = True
            out.append(call)
        teardown = got.get("teardown")
        if teardown is None:
            # A missing call already failed the test; otherwise the teardown is what's missing.
            teardown = (
                _synthetic(item, "teardown")
                if synthetic_call
                else _synthetic(item, "teardown", "failed", missing)
            )
        out.append(teardown)
        return out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.run
        if run is None:
            return
        clean = run.skip_reason is None and run.guest_rc == 0
        boot = f"{run.boot_s:.1f} s" if run.boot_s is not None else "n/a"
        guest = f"{run.guest_s:.1f} s" if run.guest_s is not None else "n/a"
        terminalreporter.write_sep("-", "kernel VM")
        terminalreporter.write_line(
            f"kernel {run.kernel.name}: boot to first command {boot}, guest pytest {guest}, "
            f"whole VM run {run.total_s:.1f} s, guest exit code {run.guest_rc}"
        )
        try:
            slow = json.loads((run.workdir / "shared" / SLOWNESS_FILE).read_text())
            host_s = slow["host_workload_s"]
            terminalreporter.write_line(
                f"slowness factor {slow['factor']:.1f} (python + agent imports: host "
                f"{host_s:.2f} s, guest {slow['factor'] * host_s:.2f} s; measuring took "
                f"{slow['measured_in_s']:.1f} s): test deadlines scaled by it"
            )
        except (OSError, ValueError, KeyError):
            terminalreporter.write_line("slowness factor: not measured (deadlines unscaled)")
        if not clean or _env_flag(ENV_VM_KEEP):
            terminalreporter.write_line(f"VM logs and junit XML kept in {run.workdir}")

    def pytest_sessionfinish(self) -> None:
        # Interrupted, or -x stopped before the kernel tests: end the VM, leave nothing.
        if self._thread is not None:
            self._cancel.set()
            self._thread.join()
            self._thread = None
            if self.run is not None:
                shutil.rmtree(self.run.workdir, ignore_errors=True)
                self.run = None

    def pytest_unconfigure(self) -> None:
        run = self.run
        if run is None:
            return
        clean = run.skip_reason is None and run.guest_rc == 0
        if clean and not _env_flag(ENV_VM_KEEP):
            shutil.rmtree(run.workdir, ignore_errors=True)


def _synthetic(
    item: pytest.Item,
    when: When,
    outcome: Literal["passed", "failed", "skipped"] = "passed",
    longrepr: str | tuple[str, int, str] | None = None,
) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=outcome,
        longrepr=longrepr,
        when=when,
    )
