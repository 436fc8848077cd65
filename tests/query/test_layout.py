"""A snapshot's layout: built from its parent's when the snapshot only appended files (planning the whole snapshot
reads one more manifest per commit), planned from scratch otherwise; either way the same as a full plan."""

from __future__ import annotations

from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from k2.query.engine import QueryEngine
from k2.query.layout import Layout, read_layout
from tests.query.records import append_trades, at, trade


def test_an_appended_snapshot_extends_its_parents_layout_and_a_delete_is_planned_afresh(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    table = tables["trades_v2"]
    snapshots: list[int] = []
    layouts: list[Layout] = []
    with QueryEngine(catalog) as engine:
        for day in range(3):
            snapshots.append(append_trades(table, [trade(at(10, day=day), "1.5", "10", day, symbol="BHP")]))
            engine.refresh()
            layouts.append(engine.layout("trades_v2"))
        table.delete(EqualTo("symbol", "BHP"))  # every file rewritten or dropped: not an append
        table = catalog.load_table(table.name())
        engine.refresh()
        after_delete = engine.layout("trades_v2")

    planned = [read_layout(table, snapshot) for snapshot in snapshots]
    assert layouts == planned
    assert [len(layout.files) for layout in layouts] == [1, 2, 3]
    assert [f.day for f in layouts[2].files] == [at(10, day=d).date() for d in (2, 1, 0)]  # newest day first
    # built from the parent: with an empty stand-in for it, only the file the last append added is there
    alone = read_layout(table, snapshots[2], Layout((), False, layouts[1].field_ids))
    assert [f.path for f in alone.files] == [layouts[2].files[0].path]
    assert after_delete == read_layout(table, table.metadata.current_snapshot_id)
    assert after_delete.files == ()
