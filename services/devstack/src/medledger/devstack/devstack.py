"""The local stack behind ``medledger dev up|down|status``: fixed ports, state in one folder.

Everything it starts is recorded in a pid file; ``down`` stops exactly those processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from medledger.common.keyfiles import KeyPair, ensure_key_pair
from medledger.devstack.mllp import MLLP_PORT, MllpServer
from medledger.devstack.mongo import MongoServer, mongod_cache_size
from medledger.devstack.paths import StackPaths, local_model_repository, private_files
from medledger.devstack.probes import Health
from medledger.devstack.process import (
    ManagedProcess,
    PidRecord,
    PortBusyError,
    PortReservations,
    StackError,
    is_port_free,
    wait_listening,
)
from medledger.devstack.server import Server
from medledger.devstack.services import (
    BOOTSTRAP_ADMIN_CLIENT,
    SERVICE_DATABASES,
    SERVICE_PORTS,
    IdentityBootstrap,
    ServiceServer,
    StackEndpoints,
    StackKeys,
    read_stack_keys,
    service_available,
)
from medledger.devstack.trace_ui import (
    TRACE_UI_HTTP_PORT,
    TRACE_UI_OTLP_PORT,
    PhoenixServer,
    trace_ui_enabled,
)
from medledger.devstack.triton import TritonServer
from medledger.devstack.vault import PersistentVault

MONGO_PORT: Final = 27018
VAULT_PORT: Final = 8201
TRITON_HTTP_PORT: Final = 8010
TRITON_GRPC_PORT: Final = 8011
TRITON_METRICS_PORT: Final = 8012
# Services earlier stacks ran under names that are gone (one "witness", now witness-a and -b):
# `up` and `down` stop them by their pid files, so an old stack never holds a port we need.
RETIRED_SERVICES: Final = ("witness",)

Say = Callable[[str], None]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    health: Health
    log_file: Path
    note: str = ""


def _quiet(_: str) -> None:
    return None


class DevStack:
    """The local stack on its fixed ports, its state under ``paths.home``."""

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        self._reserved = PortReservations([])
        self.mongo = MongoServer(
            port=MONGO_PORT,
            storage_path=paths.state("mongo"),
            log_file=paths.log("mongo"),
            pid_file=paths.pid("mongo"),
            # A user per service, allowed its own database only.
            users=SERVICE_DATABASES,
            credentials_dir=paths.keys,
            cache_size=mongod_cache_size(),
        )
        self.vault = PersistentVault(
            port=VAULT_PORT,
            state_dir=paths.state("vault"),
            log_file=paths.log("vault"),
            pid_file=paths.pid("vault"),
        )
        self.triton = TritonServer(
            grpc_port=TRITON_GRPC_PORT,
            http_port=TRITON_HTTP_PORT,
            metrics_port=TRITON_METRICS_PORT,
            state_dir=paths.state("triton"),
            log_file=paths.log("triton"),
            pid_file=paths.pid("triton"),
            # `make models` writes it; poll mode picks up a rebuild without a restart.
            model_repository=local_model_repository(),
            model_control_mode="poll",
        )
        # The local trace UI (Arize Phoenix) the services send spans to; off when the
        # environment says MEDLEDGER_TRACE_UI=0.
        self.trace_ui = PhoenixServer(
            http_port=TRACE_UI_HTTP_PORT,
            otlp_port=TRACE_UI_OTLP_PORT,
            state_dir=paths.state("trace-ui"),
            log_file=paths.log("trace-ui"),
            pid_file=paths.pid("trace-ui"),
        )
        self.trace_ui_enabled = trace_ui_enabled()
        self.services = self._services(vault_tokens={}, keys=None, bootstrap=None)
        # Hospital interface engines send HL7 v2 here; it calls identity and record.
        self.mllp = MllpServer(
            port=MLLP_PORT,
            paths=paths,
            identity_addr=f"127.0.0.1:{SERVICE_PORTS['identity']}",
            record_addr=f"127.0.0.1:{SERVICE_PORTS['record']}",
            log_file=paths.log("mllp"),
            pid_file=paths.pid("mllp"),
        )

    @property
    def dependencies(self) -> list[Server]:
        return [self.mongo, self.vault, self.triton]

    @property
    def frontends(self) -> list[Server]:
        """What serves outside callers on top of the services (started after them)."""
        return [self.mllp]

    def components(self, *, deps_only: bool = False) -> list[Server]:
        if deps_only:
            return list(self.dependencies)
        trace_ui: list[Server] = [self.trace_ui] if self.trace_ui_enabled else []
        return [*self.dependencies, *trace_ui, *self.services, *self.frontends]

    def _services(
        self,
        vault_tokens: Mapping[str, str],
        keys: StackKeys | None,
        bootstrap: IdentityBootstrap | None,
    ) -> list[ServiceServer]:
        endpoints = StackEndpoints(
            mongo_uri=self.mongo.uri,
            vault_addr=self.vault.addr,
            vault_tokens=vault_tokens,
            triton_url=self.triton.grpc_url,
            keys=keys,
            identity_bootstrap=bootstrap,
            mongo_uris=self.mongo.user_uris(),
            model_repository=self.triton.model_repository,
            otlp_endpoint=self.trace_ui.otlp_endpoint if self.trace_ui_enabled else "",
        )
        return [
            ServiceServer(
                name,
                endpoints=endpoints,
                log_file=self.paths.log(name),
                pid_file=self.paths.pid(name),
            )
            for name in SERVICE_PORTS
        ]

    def _stop_retired(self, say: Say) -> list[str]:
        stopped = []
        for name in RETIRED_SERVICES:
            process = ManagedProcess(
                name, log_file=self.paths.log(name), pid_file=self.paths.pid(name)
            )
            if process.adopt() and process.stop():
                say(f"stopped {name} (pid file of an earlier stack; it is replaced)")
                stopped.append(name)
            self.paths.pid(name).unlink(missing_ok=True)
        return stopped

    def service_address(self, name: str) -> str:
        """``host:port`` of stack service ``name``."""
        return next(s.address for s in self.services if s.component == name)

    def admin_key(self) -> KeyPair:
        """The operators' admin client key pair, made on the first ``up`` and kept after:
        identity registers its public half at its first start."""
        client = BOOTSTRAP_ADMIN_CLIENT
        try:
            return ensure_key_pair(
                client, self.paths.client_key(client), self.paths.client_jwks(client)
            )
        except (OSError, ValueError) as error:
            raise StackError(f"the {client} key pair under {self.paths.keys}: {error}") from error

    def trust_keys(self) -> StackKeys | None:
        """The verifier keys of the ledger and the witnesses, when Vault serves and we hold
        the operators' token (None otherwise: they are only shown, never required here)."""
        token = self.vault.operator_token
        if not token or self.vault.health() is not Health.SERVING:
            return None
        try:
            return read_stack_keys(self.vault.addr, token)
        except StackError:
            return None

    def _preflight(self, components: Sequence[Server]) -> set[str]:
        """Adopt what already runs from our pid files; fail before starting anything if a
        port we need is taken by someone else or a service cannot run here."""
        running: set[str] = set()
        busy: list[PortBusyError] = []
        for component in components:
            if component.adopt():
                running.add(component.component)
                continue
            if component.pid_file is not None:
                component.pid_file.unlink(missing_ok=True)  # stale: its process is gone
            busy.extend(
                PortBusyError(component.component, port)
                for port in component.ports
                if not is_port_free(port, component.host)
            )
        if busy:
            raise StackError("\n".join(str(error) for error in busy))
        missing = [
            s.component
            for s in components
            if isinstance(s, ServiceServer)
            and s.component not in running
            and not service_available(s.component)
        ]
        if missing:
            raise StackError(
                "services not installed in this environment: "
                + ", ".join(f"medledger.{name}" for name in missing)
                + " (run `uv sync`, or `medledger dev up --deps-only` for the dependencies)"
            )
        return running

    def _start_mongo(self, running: set[str], say: Say) -> None:
        """Start mongo unless it runs with authentication, then make sure its users exist."""
        if "mongo" in running and not self.mongo.runs_with_auth():
            # An earlier stack's: its services hold no credential, so they go with it.
            for service in self.services:
                if service.component in running and service.stop():
                    say(f"stopped {service.component} (it had no Mongo user of its own)")
                running.discard(service.component)
            say("restarting mongo with authentication (a user per service)")
            self.mongo.stop()
            running.discard("mongo")
        if "mongo" not in running:
            say("starting mongo")
            self.mongo.start()
        for user in self.mongo.provision():
            say(f"mongo: created user {user}")

    def up(self, *, deps_only: bool = False, say: Say = _quiet) -> list[ComponentStatus]:
        """Start whatever is not running yet and wait until everything serves. What it writes
        under the home folder (itself 0700) is the user's only (umask 077)."""
        self.paths.make_home()
        with private_files():
            return self._up(deps_only=deps_only, say=say)

    def _launch_trace_ui(self, say: Say) -> Callable[[], None]:
        """Builds the trace UI's virtualenv (first up only) and launches it in a thread: it
        takes a while (a cold start ~25 s), and the rest of the stack starts meanwhile.
        Returns what waits until it serves."""
        failures: list[BaseException] = []

        def launch() -> None:
            try:
                self.trace_ui.ensure_runtime(
                    on_build=lambda venv: say(
                        f"building the trace UI's virtualenv in {venv} (first run only; takes "
                        "a while; MEDLEDGER_TRACE_UI=0 goes without it)"
                    )
                )
                say("starting trace-ui (Arize Phoenix, in the background)")
                self.trace_ui.launch()
            except BaseException as exc:  # noqa: BLE001 - re-raised by the waiter below
                failures.append(exc)

        thread = threading.Thread(target=launch, name="trace-ui-launch", daemon=True)
        thread.start()

        def wait() -> None:
            thread.join()
            if failures:
                raise failures[0]
            self.trace_ui.wait_started()

        return wait

    def _up(self, *, deps_only: bool, say: Say) -> list[ComponentStatus]:
        self._stop_retired(say)
        running = self._preflight(self.components(deps_only=deps_only))
        # Held from now until each service starts: see PortReservations.
        self._reserved = PortReservations(
            [] if deps_only else [s.port for s in self.services if s.component not in running]
        )
        try:
            return self._up_reserved(deps_only=deps_only, running=running, say=say)
        finally:
            self._reserved.release_all()

    def _up_reserved(
        self, *, deps_only: bool, running: set[str], say: Say
    ) -> list[ComponentStatus]:
        wait_for_trace_ui = None
        if not deps_only and self.trace_ui_enabled and "trace-ui" not in running:
            wait_for_trace_ui = self._launch_trace_ui(say)

        self._start_mongo(running, say)
        if "vault" not in running:
            say("starting vault")
            self.vault.start()
        elif self.vault.health() is not Health.SERVING:
            say("unsealing vault")
            self.vault.wait_started()
        for item in self.vault.provision().created:
            say(f"vault: created {item}")
        if "triton" not in running:
            self.triton.ensure_runtime(
                on_build=lambda venv: say(
                    f"building Triton's virtualenv in {venv} (first run only; takes a while)"
                )
            )
            if not any(self.triton.model_repository.glob("*/config.pbtxt")):
                say(
                    f"triton: no models in {self.triton.model_repository} yet (run `make models`;"
                    " Triton picks them up when they appear)"
                )
            say("starting triton")
            self.triton.start()

        if not deps_only:
            self._start_services(running, say)
        if wait_for_trace_ui is not None:
            wait_for_trace_ui()

        return [
            self._status(c, "already running" if c.component in running else "started")
            for c in self.components(deps_only=deps_only)
        ]

    def _start_services(self, running: set[str], say: Say) -> None:
        """Start the services not running yet, then what serves on top of them."""
        assert self.vault.operator_token is not None
        # The trust between the services: the ledger's and the witnesses' public keys.
        keys = read_stack_keys(self.vault.addr, self.vault.operator_token)
        admin = self.admin_key()
        if admin.created:
            say(f"generated the {admin.client_id} key pair: {admin.private_file}")
        bootstrap = IdentityBootstrap(admin.client_id, admin.public_file)
        self.services = self._services(self.vault.service_tokens, keys, bootstrap)
        for service in self.services:
            if service.component in running:
                service.adopt()
            else:
                say(f"starting {service.component}")
                self._reserved.release(service.port)
                service.launch()
                # Listening before the next one starts (and connects anywhere): the next
                # port stays reserved meanwhile.
                wait_listening(
                    service.port, service.host, service.start_timeout, service.is_running
                )
        for service in self.services:
            if service.component not in running:
                service.wait_started()
        for frontend in self.frontends:
            if frontend.component not in running:
                say(f"starting {frontend.component}")
                frontend.start()

    def down(self, say: Say = _quiet) -> list[str]:
        """Stop what our pid files name: services first, then the dependencies."""
        stopped = self._stop_retired(say)
        for component in [
            *reversed(self.frontends),
            *reversed(self.services),
            # Even with MEDLEDGER_TRACE_UI=0 now: an earlier up may have started it.
            self.trace_ui,
            *reversed(self.dependencies),
        ]:
            record = PidRecord.read(component.pid_file) if component.pid_file else None
            if record is None:
                continue
            if component.stop():
                say(f"stopped {component.component} (pid {record.pid})")
                stopped.append(component.component)
            else:
                say(f"{component.component} was not running (stale pid file removed)")
        return stopped

    def status(self) -> list[ComponentStatus]:
        return [self._status(c) for c in self.components()]

    def _status(self, component: Server, note: str = "") -> ComponentStatus:
        record = PidRecord.read(component.pid_file) if component.pid_file else None
        alive = record is not None and record.is_running()
        if record is not None and not alive:
            note = note or "stale pid file"
        return ComponentStatus(
            name=component.component,
            address=component.address,
            pid=record.pid if alive and record is not None else None,
            health=component.health(),
            log_file=component.log_file,
            note=note,
        )
