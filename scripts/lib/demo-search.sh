# Sourced by the demo and the outcome study: the search both run, so that the study measures
# the search the demo shows. Token limits that keep the 1.5B judge's run short on two cores yet
# leave the aspect selector and the judge room to write their analysis and rationales before
# their scores (a JSON answer needs about 210 tokens for its keys and scores alone; with less,
# the local decoder closes every string at once, and the provider's progress line says so),
# and the optimizer room for its analysis and thought before the prompt itself; beam at depth
# 2 with two beams and two actions.
demo_tokens=(--option base_max_tokens=64 --option metrics_max_tokens=320
    --option judge_max_tokens=384 --option optimizer_max_tokens=384)
demo_search=(--depth 2 --beam-size 2 --n-actions 2 "${demo_tokens[@]}")
