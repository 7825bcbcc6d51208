"""Wang et al. (IEEE/ACM ToN 2019) on the real San Francisco taxi trace."""
