// CausalServer: the OpenAI-compatible HTTP server (Hummingbird). It calls only CausalLM's public API.
import CausalLM
