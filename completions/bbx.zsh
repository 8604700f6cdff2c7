
#compdef bbx

_bbx_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _BBX_COMPLETE=complete_zsh bbx)
}

compdef _bbx_completion bbx

