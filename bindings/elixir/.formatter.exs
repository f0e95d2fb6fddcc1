[
  inputs: ["mix.exs", "{lib,test}/**/*.{ex,exs}", "bench/**/*.{ex,exs}"],
  line_length: 100
]
