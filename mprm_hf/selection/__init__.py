"""Selection of informative rollouts: scores (BIS and its parts), selectors at a budget, the reference's
byte-exact output, and the report / card of a selection. `mprm_hf.select` is `selectors.select`."""
