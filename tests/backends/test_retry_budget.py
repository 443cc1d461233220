"""The failover budget (backends/retry_budget.py) over a hand-driven clock."""

from vlm_gateway.backends.retry_budget import MIN_RETRIES_PER_WINDOW, WINDOW_S, RetryBudgets


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def spend_all(budgets, model="m"):
    spent = 0
    while budgets.try_spend(model):
        spent += 1
    return spent


def test_a_quiet_model_gets_the_minimum():
    clock = Clock()
    budgets = RetryBudgets(lambda _m: 0.2, clock)
    budgets.requested("m")
    assert spend_all(budgets) == MIN_RETRIES_PER_WINDOW


def test_a_busy_model_gets_a_fifth_of_its_requests():
    clock = Clock()
    budgets = RetryBudgets(lambda _m: 0.2, clock)
    for _ in range(500):
        budgets.requested("m")
    assert spend_all(budgets) == 100
    assert spend_all(budgets, "other") == MIN_RETRIES_PER_WINDOW  # budgets are per model


def test_the_window_slides():
    clock = Clock()
    budgets = RetryBudgets(lambda _m: 0.2, clock)
    budgets.requested("m")
    assert spend_all(budgets) == MIN_RETRIES_PER_WINDOW
    clock.now += WINDOW_S / 2
    assert not budgets.try_spend("m")
    clock.now += WINDOW_S / 2 + 1
    assert spend_all(budgets) == MIN_RETRIES_PER_WINDOW


def test_zero_turns_failover_off():
    budgets = RetryBudgets(lambda _m: 0.0, Clock())
    budgets.requested("m")
    assert not budgets.try_spend("m")
