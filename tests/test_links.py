"""The refresher's cookie links (:class:`dmp_ml.links.LinkIndex`) answer as the whole map with
every delta merged in would, batch after batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmp_ml.delta import merge_links
from dmp_ml.links import LINKS_FILE, LinkIndex, write_link_index


def _links(cookies: list[str], profiles: list[str]) -> pd.Series:
    index = pd.Index(cookies, dtype="string", name="cookie_id")
    return pd.Series(pd.array(profiles, dtype="string"), index=index, name="profile_id")


def test_a_table_written_before_link_indexes_has_none(tmp_path: Path) -> None:
    _links(["c1"], ["p1"]).reset_index().to_parquet(tmp_path / LINKS_FILE, index=False)
    assert LinkIndex.read(tmp_path) is None


@pytest.mark.parametrize("source", ["built", "written"])
def test_the_index_answers_as_the_merged_map_after_each_change(source: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    people = [f"p{i}" for i in range(300)] + ["p\u00e9-long-" + "x" * 40]
    cookies = [f"c{i:04d}" for i in range(900)]
    chosen = rng.choice(len(cookies), 700, replace=False)
    whole = _links(
        [cookies[i] for i in sorted(chosen)], [people[i] for i in rng.integers(0, 301, 700)]
    )
    if source == "built":
        index = LinkIndex.build(whole)
    else:  # as a bundle's feature table writes it, mapped by a refresher that loads it
        whole.reset_index().to_parquet(tmp_path / LINKS_FILE, index=False)
        write_link_index(whole, tmp_path)
        read = LinkIndex.read(tmp_path)
        assert read is not None
        index = read
    asked_cookies = pd.Index([*cookies, "c-never", "c0001" + "y" * 30], dtype="string")
    asked_people = pd.Index([*people, "p-never"], dtype="string")
    for _ in range(8):  # batches: cookies moved, profiles relinked, new cookies linked
        redone = pd.Index(rng.choice(cookies, 20, replace=False), dtype="string")
        relinked = pd.Index(pd.unique(rng.choice(people, 15)), dtype="string")
        fresh = [f"new{rng.integers(1_000_000)}" for _ in range(10)]
        targets = [people[i] for i in rng.integers(0, 301, 30)]
        batch = _links(sorted({*redone[:20].tolist(), *fresh}), targets[: len({*redone, *fresh})])
        batch = batch[~batch.index.duplicated()]
        asked_cookies = asked_cookies.append(pd.Index(fresh, dtype="string"))

        linked = index.linked(asked_cookies)
        targeted = index.targeted(asked_people)
        np.testing.assert_array_equal(linked, asked_cookies.isin(whole.index))
        np.testing.assert_array_equal(targeted, asked_people.isin(whole.to_numpy()))
        assert index.target(whole.index[:50]) == whole.iloc[:50].tolist()

        whole = merge_links(whole, redone, relinked, batch)
        index.change(redone, relinked, batch)

    np.testing.assert_array_equal(index.linked(asked_cookies), asked_cookies.isin(whole.index))
    np.testing.assert_array_equal(index.targeted(asked_people), asked_people.isin(whole.to_numpy()))
