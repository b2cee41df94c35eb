// Verify the tiles of a search by name one at a time: each asks /api/verify for its verdict.
(async () => {
  const tiles = [...document.querySelectorAll("figure.tile[data-verify]")];
  const next = async () => {
    const tile = tiles.shift();
    if (!tile) return;
    try {
      const hit = await (await fetch(tile.dataset.verify, {credentials: "same-origin"})).json();
      tile.classList.remove("pending", "verdict-similar");
      tile.classList.add("verdict-" + hit.verdict);
      tile.querySelector(".verdict").textContent = hit.verdict;
      if (hit.inliers) tile.querySelector(".distance").insertAdjacentHTML("afterend",
        `<span class="inliers">${hit.inliers} inliers</span>`);
    } catch (error) {
      tile.querySelector(".verdict").textContent = "similar";
    }
    await next();
  };
  await Promise.all([next(), next(), next()]);
})();
