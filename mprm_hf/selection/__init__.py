"""Selection of informative rollouts, one path for every selector and format: `scan` (the cached
per-rollout score table), `scores` (BIS and the budget rule, each defined once), `selectors`, `writers`
(reference PRM jsonl, stepwise jsonl / parquet / Arrow, all atomic), `report` (terminal table, histogram,
card facts) and `subset` (the path end to end). `mprm_hf.select` is `selectors.select`."""
