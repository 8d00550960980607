"""Cost arithmetic: integers only, per impression, copies/sides/number-up/size."""

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.charging import (
    LAB_POLICY,
    CostPolicy,
    Rates,
    affordable,
    price_impressions,
    quote_print,
)


def test_lab_policy_three_page_mono_pdf_costs_30_and_60_with_two_copies():
    assert quote_print(LAB_POLICY, pages=3, colour=False).cost == 30
    assert quote_print(LAB_POLICY, pages=3, colour=False, copies=2).cost == 60


def test_colour_is_40_per_page_and_duplex_is_charged_per_side():
    assert quote_print(LAB_POLICY, pages=2, colour=True).cost == 80
    duplex = quote_print(LAB_POLICY, pages=3, colour=False, sides="two-sided-long-edge")
    assert (duplex.impressions, duplex.sheets, duplex.cost) == (3, 2, 30)


def test_number_up_puts_pages_on_one_side():
    quote = quote_print(LAB_POLICY, pages=5, colour=False, number_up=2, copies=3)
    assert (quote.impressions, quote.cost) == (9, 90)


def test_duplex_discount_and_paper_size_rates():
    policy = CostPolicy(default=Rates(10, 40, duplex_mono=8),
                        sizes={"iso_a3": Rates(20, 80)})
    assert quote_print(policy, pages=4, colour=False, sides="two-sided-short-edge").cost == 32
    assert quote_print(policy, pages=1, colour=True, media="iso_a3_297x420mm").cost == 80


def test_uncountable_documents_quote_zero_and_are_priced_from_impressions():
    assert quote_print(LAB_POLICY, pages=None, colour=False).cost == 0
    assert price_impressions(LAB_POLICY, 7, colour=True, sides="one-sided", media=None) == 280


def test_policy_round_trips_through_json():
    policy = CostPolicy(default=Rates(10, 40, 9, 35), sizes={"na_legal": Rates(12, 45)},
                        copy=Rates(5, 20), scan=1, fax=3)
    assert CostPolicy.from_json(policy.to_json()) == policy


@settings(max_examples=500)
@given(balance=st.integers(-10**6, 10**6), overdraft=st.integers(0, 10**5),
       per=st.integers(1, 1000), wanted=st.integers(0, 10**4))
def test_affordable_never_exceeds_balance_plus_overdraft(balance, overdraft, per, wanted):
    n = affordable(balance, overdraft, per, wanted)
    assert 0 <= n <= wanted
    assert n * per <= max(0, balance + overdraft)
    if n < wanted:
        assert (n + 1) * per > balance + overdraft
