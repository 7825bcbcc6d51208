"""Real cities: site tables and mobility traces read from a data folder.

Importing this package registers the ``dataset-sites`` topology and the
``dataset-replay`` and ``gps-replay`` mobility sources, so scenario configs
can name them. Data are read in place from the folder given explicitly or by
``$MECRL_DATA_DIR`` (see :mod:`mecrl.datasets.paths`); parsed traces are
cached as ``.npz`` files keyed by the SHA-256 of their source
(:mod:`mecrl.datasets.cache`).

| module | what |
|---|---|
| :mod:`~mecrl.datasets.sitesets` | site tables: SF cells, OpenCelliD, EUA |
| :mod:`~mecrl.datasets.geo` | projection to metres, clustering cells into sites |
| :mod:`~mecrl.datasets.traces` | Wang et al.'s taxi-to-cell attachment table |
| :mod:`~mecrl.datasets.gps` | raw cabspotting GPS mapped to sites, with a report |
| :mod:`~mecrl.datasets.topology` | the ``dataset-sites`` topology (Delaunay links) |
| :mod:`~mecrl.datasets.replay` | the ``dataset-replay`` and ``gps-replay`` sources |
"""

from mecrl.datasets.cache import cache_path, cached_arrays, clear_memory_cache
from mecrl.datasets.geo import LocalProjection, cluster_points
from mecrl.datasets.gps import (
    GpsFixes,
    GpsReport,
    GpsTrace,
    gps_file,
    load_gps_fixes,
    load_gps_trace,
    map_gps_to_sites,
)
from mecrl.datasets.paths import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DatasetNotFoundError,
    resolve_cache_dir,
    resolve_data_dir,
)
from mecrl.datasets.replay import DatasetReplay, GpsReplay, TraceReplay
from mecrl.datasets.scenarios import uses_real_data, with_data_dir
from mecrl.datasets.sitesets import SITE_SOURCES, GeoSites, load_sites
from mecrl.datasets.topology import DatasetTopology, dataset_sites_topology
from mecrl.datasets.traces import AttachmentTrace, load_attachment_trace

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "SITE_SOURCES",
    "AttachmentTrace",
    "DatasetNotFoundError",
    "DatasetReplay",
    "DatasetTopology",
    "GeoSites",
    "GpsFixes",
    "GpsReplay",
    "GpsReport",
    "GpsTrace",
    "LocalProjection",
    "TraceReplay",
    "cache_path",
    "cached_arrays",
    "clear_memory_cache",
    "cluster_points",
    "dataset_sites_topology",
    "gps_file",
    "load_attachment_trace",
    "load_gps_fixes",
    "load_gps_trace",
    "load_sites",
    "map_gps_to_sites",
    "resolve_cache_dir",
    "resolve_data_dir",
    "uses_real_data",
    "with_data_dir",
]
