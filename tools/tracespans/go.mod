module github.com/imgn/imgn/tools/tracespans

go 1.26.8

require golang.org/x/exp v0.0.0-20261121134650-e1094eeca1b5
