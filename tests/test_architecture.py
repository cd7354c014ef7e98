"""The import graph keeps its shape (issue #22): no import circles, no upward
arrows. The contracts live in pyproject.toml ([tool.importlinter]); this runs
them as `lint-imports` would, in-process, on the code as it is on disk."""

import abc
from pathlib import Path

import importlinter.api  # noqa: F401  (configures import-linter, as its command does)
import pytest
from importlinter.application import use_cases

PYPROJECT = str(Path(__file__).resolve().parents[1] / "pyproject.toml")


@pytest.fixture(autouse=True)
def plain_abc(monkeypatch):
    """zope.interface (loaded here by Twisted, under daphne) declares `abc.ABC`, so
    reading `ABC.__provides__` from a subclass raises AttributeError, which breaks
    import-linter's reading of its contract classes. The command line has no Twisted."""
    monkeypatch.delattr(abc.ABC, "__provides__", raising=False)


def report_with(*extra_imports):
    """Check every contract on the real graph, plus `extra_imports` (importer, imported)."""
    options = use_cases.read_user_options(PYPROJECT)
    use_cases._register_contract_types(options)
    graph = use_cases._build_graph(
        root_package_names=options.session_options["root_packages"],
        include_external_packages=False,
        exclude_type_checking_imports=False,
        verbose=False,
        cache_dir=None,
    )
    for importer, imported in extra_imports:
        graph.add_import(importer=importer, imported=imported)
    report = use_cases._build_report(
        graph=graph,
        graph_building_duration=0,
        user_options=options,
        limit_to_contracts=(),
        show_timings=False,
        verbose=False,
    )
    assert not report.invalid_contract_options, report.invalid_contract_options
    return {contract.name: check.kept for contract, check in report.get_contracts_and_checks()}


def test_the_code_keeps_every_import_contract(capsys):
    kept = use_cases.lint_imports(config_filename=PYPROJECT, cache_dir=None, no_logo=True)
    assert kept, capsys.readouterr().out


@pytest.mark.parametrize(
    "importer, imported, broken",
    [
        # The circle of issue #22: a service importing the channel routing.
        ("whatsapp.services.leases", "whatsapp.routing", {"circles", "layers"}),
        # The transport importing a model again (the models use the transport's kinds).
        ("whatsapp.transport.normalize", "whatsapp.models.messages", {"circles", "layers"}),
        # An upward arrow that closes no circle: the API importing the channel routing.
        ("whatsapp.api.sessions", "whatsapp.routing", {"layers"}),
        # A circle inside one layer: two services importing each other.
        ("whatsapp.services.leases", "whatsapp.services.sending", {"circles"}),
        # (The API plumbing imports companies.models, so it would import whatsapp too.)
        ("companies.models", "whatsapp.models", {"companies", "aiadmin.api"}),
        ("aiadmin.api.errors", "whatsapp.services.leases", {"aiadmin.api"}),
        ("whatsapp.simulator.state", "whatsapp.transport.jids", {"simulator"}),
    ],
)
def test_a_new_circle_or_upward_import_breaks_a_contract(importer, imported, broken):
    assert all(report_with().values())
    names = {
        "circles": "No import circles (within any package, at any depth)",
        "layers": "whatsapp layers: entry points > services > models > transport",
        "simulator": "The WhatsApp simulator stands alone (it plays WhatsApp, not the app)",
        "companies": "companies does not import whatsapp",
        "aiadmin.api": "The shared API plumbing (aiadmin.api) does not import the whatsapp app",
    }
    kept = report_with((importer, imported))
    assert {name for name, ok in kept.items() if not ok} == {names[b] for b in broken}
