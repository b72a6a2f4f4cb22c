"""Screenshot of the search page of a running `multimodal serve`, taken in headless Chromium (Selenium).

    make serve-demo &            # or any `multimodal serve --index ...`
    python examples/screenshot_page.py --url http://localhost:8000 --query "black leather watch" \
        --out docs/images/search-page.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://localhost:8000")
    p.add_argument("--query", default="black leather watch")
    p.add_argument("--out", default="docs/images/search-page.png")
    p.add_argument("--size", default="1280,900", help="window width,height")
    args = p.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (*FLAGS, f"--window-size={args.size}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(args.url.rstrip("/") + "/")
        driver.find_element(By.ID, "q").send_keys(args.query)
        driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#results .hit img')];"
            "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0);"))  # fmt: skip
        driver.save_screenshot(args.out)
        print(f"{args.out}: {len(driver.find_elements(By.CSS_SELECTOR, '#results .hit'))} results shown")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
