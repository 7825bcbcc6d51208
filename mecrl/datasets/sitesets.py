"""Site tables of real deployments: where the edge sites of a city are.

| dataset | file (under the data folder) | rows | sites by default |
|---|---|---|---|
| ``sf-wang2019`` | ``sf-wang2019/sf_cells.csv`` | 209 | 209, in file order |
| ``sf-opencellid`` | ``sf-opencellid/cell_towers_san_francisco.csv`` | 1,999 | |
| | | | cells merged within 200 m |
| ``melbourne-cbd`` | ``eua-melbourne/sites-melbourne-cbd.csv`` | 125 | 125 |
| ``melbourne-metro`` | ``eua-melbourne/sites-melbourne-metro.csv`` | 1,464 | 1,464 |

Each table is projected to metres about the centroid of its rows
(:class:`~mecrl.datasets.geo.LocalProjection`). Rows with a position that is
not a number or lies outside [-90, 90] x [-180, 180] degrees are dropped and
counted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mecrl.config import check
from mecrl.datasets.geo import (
    FloatArray,
    IntArray,
    LocalProjection,
    centroids,
    cluster_points,
)
from mecrl.datasets.paths import data_file
from mecrl.datasets.tables import Column, read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSource:
    """Where a site table lives and how to read it."""

    folder: str
    """Subfolder of the data folder."""
    file: str
    """File name within the subfolder."""
    id_column: str
    """Column identifying a row (cell or site id)."""
    lat_column: str
    """Column of the latitude, WGS84 degrees."""
    lon_column: str
    """Column of the longitude, WGS84 degrees."""
    cluster_radius_m: float = 0.0
    """Default clustering radius; 0 keeps every row as its own site."""
    description: str = ""
    """One line on the dataset and its licence."""


SITE_SOURCES: dict[str, SiteSource] = {
    "sf-wang2019": SiteSource(
        "sf-wang2019",
        "sf_cells.csv",
        "cell_id",
        "latitude",
        "longitude",
        description="209 San Francisco cells of Wang et al. (ToN 2019), MIT",
    ),
    "sf-opencellid": SiteSource(
        "sf-opencellid",
        "cell_towers_san_francisco.csv",
        "cell",
        "lat",
        "lon",
        cluster_radius_m=200.0,
        description="1,999 Verizon LTE cells in San Francisco, OpenCelliD "
        "Project, CC BY-SA 4.0",
    ),
    "melbourne-cbd": SiteSource(
        "eua-melbourne",
        "sites-melbourne-cbd.csv",
        "SITE_ID",
        "LATITUDE",
        "LONGITUDE",
        description="125 Optus sites of Melbourne's CBD, EUA dataset, MIT",
    ),
    "melbourne-metro": SiteSource(
        "eua-melbourne",
        "sites-melbourne-metro.csv",
        "idx",
        "LATITUDE",
        "LONGITUDE",
        description="1,464 Optus sites of metropolitan Melbourne, EUA dataset, MIT",
    ),
}
"""Site tables by dataset name."""


@dataclass(frozen=True, eq=False)
class GeoSites:
    """The edge sites of a real deployment, in degrees and in metres."""

    dataset: str
    """Dataset name (a key of :data:`SITE_SOURCES`)."""
    latitude_deg: FloatArray
    """(M,) latitude of each site (the centroid of its cells)."""
    longitude_deg: FloatArray
    """(M,) longitude of each site."""
    positions_m: FloatArray
    """(M, 2) projected position of each site, metres east and north."""
    projection: LocalProjection
    """The projection from degrees to ``positions_m``."""
    site_ids: tuple[str, ...]
    """Id of each site's first row in the source file."""
    row_ids: tuple[str, ...]
    """(N,) id of each kept row of the source file (a cell or site id)."""
    site_of_row: IntArray
    """(N,) site of each kept row of the source file."""
    cluster_radius_m: float
    """Clustering radius used; 0 when rows were not merged."""
    rows: int
    """Data rows in the source file."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped, by reason (see :mod:`mecrl.datasets.tables`)."""

    @property
    def n_sites(self) -> int:
        """Number of sites ``M``."""
        return len(self.positions_m)

    def sites_of(self, row_ids: np.ndarray) -> IntArray:
        """Return the site holding each given row id, -1 for an unknown id.

        Args:
            row_ids: Ids as in the source file's id column (numbers are
                compared by their text, so pass ``1`` or ``"1"``, not ``1.0``).
        """
        ids = np.asarray(row_ids)
        lookup = dict(zip(self.row_ids, self.site_of_row.tolist(), strict=True))
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        found = np.array(
            [lookup.get(str(row), -1) for row in unique.tolist()], dtype=np.int64
        )
        return found[inverse.ravel()].reshape(ids.shape)


def load_sites(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    cluster_radius_m: float | None = None,
) -> GeoSites:
    """Load a site table, projected to metres and optionally clustered.

    Args:
        dataset: A key of :data:`SITE_SOURCES`.
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.
        cluster_radius_m: Radius for merging cells into sites, or None for
            the dataset's default (200 m for ``sf-opencellid``, else 0).

    Raises:
        ValueError: If the dataset is unknown, the radius is invalid, the file
            lacks a column or holds no valid row.
        DatasetNotFoundError: If the data folder or the file is missing.
    """
    check(
        dataset in SITE_SOURCES,
        "dataset",
        f"unknown site dataset {dataset!r}; known: {', '.join(sorted(SITE_SOURCES))}",
    )
    source = SITE_SOURCES[dataset]
    radius = source.cluster_radius_m if cluster_radius_m is None else cluster_radius_m
    path = data_file(data_dir, source.folder, source.file)
    stat = path.stat()
    return _load(dataset, str(path), stat.st_mtime_ns, stat.st_size, float(radius))


@lru_cache(maxsize=16)
def _load(
    dataset: str, path: str, mtime_ns: int, size: int, radius_m: float
) -> GeoSites:
    """Read, project and cluster a site table; memoised by file and radius."""
    del mtime_ns, size  # only part of the memo key: a changed file is re-read
    source = SITE_SOURCES[dataset]
    table = read_table(
        Path(path),
        [
            Column(source.id_column, "str"),
            Column(source.lat_column, "float", -90.0, 90.0),
            Column(source.lon_column, "float", -180.0, 180.0),
        ],
    )
    ids = table.columns[source.id_column]
    lat = table.columns[source.lat_column]
    lon = table.columns[source.lon_column]
    check(len(lat) > 0, "dataset", f"{path} holds no valid row")
    if any(table.dropped.values()):
        logger.warning("%s: dropped rows %s", path, table.dropped)

    projection = LocalProjection.about(lat, lon)
    cells_m = projection.to_metres(lat, lon)
    labels = cluster_points(cells_m, radius_m)
    positions_m = centroids(cells_m, labels)
    site_lat, site_lon = projection.to_degrees(positions_m)
    first_row = np.unique(labels, return_index=True)[1]
    for array in (site_lat, site_lon, positions_m, labels):
        array.setflags(write=False)  # memoised: shared by every caller
    sites = GeoSites(
        dataset=dataset,
        latitude_deg=site_lat,
        longitude_deg=site_lon,
        positions_m=positions_m,
        projection=projection,
        site_ids=tuple(str(ids[row]) for row in first_row),
        row_ids=tuple(str(row) for row in ids.tolist()),
        site_of_row=labels,
        cluster_radius_m=radius_m,
        rows=table.rows,
        dropped=dict(table.dropped),
    )
    logger.info(
        "%s: %d rows, %d kept, %d sites (cluster radius %g m)",
        dataset,
        table.rows,
        table.kept,
        sites.n_sites,
        radius_m,
    )
    return sites
