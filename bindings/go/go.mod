module example.org/rserpool

go 1.19
