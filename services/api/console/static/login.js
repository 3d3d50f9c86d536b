// The login form: POST /login with the admin token; the answer sets the session cookie.
const form = document.getElementById("login");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error");
  error.textContent = "";
  const token = document.getElementById("token").value.trim();
  const answer = await fetch("/login", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
    credentials: "same-origin",
  });
  if (answer.ok) { location.replace("/"); return; }
  error.textContent = answer.status === 429 ? "Too many attempts; wait a minute." : "That is not the admin token.";
});
